package org.fhirmatch.hapi;

import ca.uhn.fhir.batch2.jobs.export.BulkDataExportProvider;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.interceptor.CascadingDeleteInterceptor;
import ca.uhn.fhir.jpa.interceptor.UserRequestRetryVersionConflictsInterceptor;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.narrative2.NullNarrativeGenerator;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/** The REST layer: HAPI's servlet with the providers and interceptors fhir-match relies on. */
@Configuration
public class FhirServerConfig {

	/** Same paging limits as the public HAPI sandbox. */
	static final int DEFAULT_PAGE_SIZE = 20;

	static final int MAX_PAGE_SIZE = 500;

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviders,
			IJpaSystemProvider systemProvider,
			BulkDataExportProvider bulkDataExportProvider,
			DatabaseBackedPagingProvider pagingProvider,
			CascadingDeleteInterceptor cascadingDeleteInterceptor,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport) {
		RestfulServer server = new RestfulServer(systemDao.getContext());
		// No generated HTML narratives in stored resources.
		server.getFhirContext().setNarrativeGenerator(new NullNarrativeGenerator());
		server.setDefaultResponseEncoding(EncodingEnum.JSON);

		// CRUD + search for every R4 type; system level: transaction/batch, $expunge, $meta...
		server.registerProviders(resourceProviders.createProviders());
		server.registerProvider(systemProvider);
		// $export at system, Patient and Group level (async, Prefer: respond-async).
		server.registerProvider(bulkDataExportProvider);

		// Search results are kept in the database so "next" links survive between requests.
		pagingProvider.setDefaultPageSize(DEFAULT_PAGE_SIZE);
		pagingProvider.setMaximumPageSize(MAX_PAGE_SIZE);
		server.setPagingProvider(pagingProvider);

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport);
		capabilities.setImplementationDescription("fhir-match local HAPI FHIR R4 server");
		server.setServerConformanceProvider(capabilities);

		// DELETE ...?_cascade=delete removes the resources that reference the target too.
		server.registerInterceptor(cascadingDeleteInterceptor);
		// Requests sending "X-Retry-On-Version-Conflict: retry; max-retries=N" are retried on a
		// version conflict, e.g. the loser of two concurrent identical conditional creates gets
		// the winner's resource instead of a 409.
		server.registerInterceptor(new UserRequestRetryVersionConflictsInterceptor());
		return server;
	}
}
