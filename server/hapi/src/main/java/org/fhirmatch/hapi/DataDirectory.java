package org.fhirmatch.hapi;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import org.springframework.boot.system.ApplicationHome;

/** Where the H2 database lives: $FHIR_DATA_DIR, else var/hapi under the repository root. */
final class DataDirectory {

	private DataDirectory() {}

	static Path resolve() {
		String fromEnv = System.getenv("FHIR_DATA_DIR");
		if (fromEnv != null && !fromEnv.isBlank()) {
			return Paths.get(fromEnv).toAbsolutePath().normalize();
		}
		return repoRoot().resolve("var").resolve("hapi");
	}

	/**
	 * The repository root is the nearest folder above the running jar (server/hapi/target/ or
	 * server/hapi/target/app/) that holds server/hapi/pom.xml. When run from elsewhere (a
	 * copied jar), fall back to the working directory.
	 */
	private static Path repoRoot() {
		Path dir = new ApplicationHome(DataDirectory.class).getDir().toPath().toAbsolutePath();
		for (Path p = dir; p != null; p = p.getParent()) {
			if (Files.isRegularFile(p.resolve("server/hapi/pom.xml"))) {
				return p;
			}
		}
		return Paths.get("").toAbsolutePath();
	}
}
