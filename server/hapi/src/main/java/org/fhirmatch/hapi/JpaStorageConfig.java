package org.fhirmatch.hapi;

import ca.uhn.fhir.batch2.maintenance.JobMaintenanceServiceImpl;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import jakarta.persistence.EntityManagerFactory;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import javax.sql.DataSource;
import org.apache.commons.dbcp2.BasicDataSource;
import org.hibernate.cfg.AvailableSettings;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

/** Storage: which JPA server features are on, and the H2 file database behind them. */
@Configuration
@EnableTransactionManagement
public class JpaStorageConfig {

	private static final Logger ourLog = LoggerFactory.getLogger(JpaStorageConfig.class);

	/** How often batch2 jobs (bulk export, delete-expunge) advance; HAPI's default is 60 s. */
	private static final long BATCH_MAINTENANCE_INTERVAL_MS = 2_000;

	@Bean
	public JpaStorageSettings jpaStorageSettings() {
		JpaStorageSettings settings = new JpaStorageSettings();
		// DELETE Observation?subject=... may match many resources.
		settings.setAllowMultipleDelete(true);
		// $expunge (instance, type, system) and DELETE ...&_expunge=true.
		settings.setExpungeEnabled(true);
		settings.setDeleteExpungeEnabled(true);
		// HAPI by default answers a repeated identical search from a cached result for 60 s, so
		// a write followed by the same search is not seen (unless Cache-Control: no-cache).
		// Tests write then search at once: always run searches fresh here.
		settings.setReuseCachedSearchResultsForMillis(null);
		// Likewise each $export must reflect current data, not a reused earlier export.
		settings.setEnableBulkExportJobReuse(false);
		// References must point to resources on this server, unless FHIR_ALLOW_EXTERNAL_REFERENCES
		// is true: a write store, whose subjects and Provenance cite the EHR's resources by
		// absolute URL (searchable as such: ResearchSubject?individual=<EHR base>/Patient/1).
		boolean external = "true".equalsIgnoreCase(System.getenv("FHIR_ALLOW_EXTERNAL_REFERENCES"));
		settings.setAllowExternalReferences(external);
		if (external) {
			ourLog.info("external references allowed (FHIR_ALLOW_EXTERNAL_REFERENCES=true)");
		}
		return settings;
	}

	/** Required by HAPI even unpartitioned; the defaults mean "no partitioning". */
	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	/** Required by HAPI's subscription plumbing; no subscription channel types are enabled. */
	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}

	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource() throws IOException {
		Path dir = DataDirectory.resolve();
		Files.createDirectories(dir);
		ourLog.info("H2 database directory: {}", dir);
		BasicDataSource ds = new BasicDataSource();
		ds.setDriverClassName("org.h2.Driver");
		// TRACE_LEVEL_FILE=0: no ever-growing *.trace.db file next to the database.
		// DB_CLOSE_ON_EXIT=FALSE: let Spring close the pool at shutdown instead of H2's own
		// JVM hook racing it (which makes in-flight batch work fail during a graceful stop).
		ds.setUrl("jdbc:h2:file:" + dir.resolve("fhir") + ";TRACE_LEVEL_FILE=0;DB_CLOSE_ON_EXIT=FALSE");
		ds.setUsername("sa");
		ds.setPassword("");
		ds.setMaxTotal(20);
		return ds;
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			DataSource dataSource) {
		// HAPI's helper registers its entity packages and the Hibernate integrations it needs.
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		Map<String, Object> props = new HashMap<>();
		props.put(AvailableSettings.DIALECT, HapiFhirH2Dialect.class.getName());
		// The schema is created and evolved by Hibernate (Flyway is switched off).
		props.put(AvailableSettings.HBM2DDL_AUTO, "update");
		props.put(AvailableSettings.STATEMENT_BATCH_SIZE, "20");
		props.put(AvailableSettings.USE_SECOND_LEVEL_CACHE, "false");
		props.put(AvailableSettings.USE_QUERY_CACHE, "false");
		// HAPI's resource id look-ups in a form H2 answers from an index (see the class).
		props.put(AvailableSettings.STATEMENT_INSPECTOR, new IdLookupRewriter());
		// No Lucene/Elasticsearch full-text index.
		props.put("hibernate.search.enabled", "false");
		emf.setPersistenceUnitName("HAPI_PU");
		emf.setDataSource(dataSource);
		emf.setJpaPropertyMap(props);
		return emf;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		return new JpaTransactionManager(entityManagerFactory);
	}

	/**
	 * Shortens the batch2 maintenance interval so a small $export completes in seconds rather
	 * than minutes. It must be applied before HAPI's scheduler registers the job (on context
	 * refresh), hence a post-processor rather than a later setter call.
	 */
	@Bean
	public static BeanPostProcessor batchMaintenanceIntervalTuner() {
		return new BeanPostProcessor() {
			@Override
			public Object postProcessAfterInitialization(Object bean, String beanName) {
				if (bean instanceof JobMaintenanceServiceImpl maintenance) {
					maintenance.setScheduledJobFrequencyMillis(BATCH_MAINTENANCE_INTERVAL_MS);
				}
				return bean;
			}
		};
	}
}
