package org.fhirmatch.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.server.RestfulServer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.elasticsearch.ElasticsearchClientAutoConfiguration;
import org.springframework.boot.autoconfigure.elasticsearch.ElasticsearchRestClientAutoConfiguration;
import org.springframework.boot.autoconfigure.quartz.QuartzAutoConfiguration;
import org.springframework.boot.autoconfigure.thymeleaf.ThymeleafAutoConfiguration;
import org.springframework.boot.context.event.ApplicationReadyEvent;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;
import org.springframework.context.event.EventListener;

/**
 * Entry point of the local FHIR R4 server used by fhir-match for development and tests.
 *
 * <p>HAPI ships the JPA server as libraries only; this class assembles them: the HAPI Spring
 * configurations below plus our own beans in {@link JpaStorageConfig} and {@link FhirServerConfig}.
 */
@SpringBootApplication(
		exclude = {
			// The Elasticsearch client is on the classpath (via jpaserver-base) but we use no
			// Elasticsearch: without these exclusions Boot tries localhost:9200 and logs errors.
			ElasticsearchClientAutoConfiguration.class,
			ElasticsearchRestClientAutoConfiguration.class,
			// HAPI brings Thymeleaf for narratives; we serve no web pages.
			ThymeleafAutoConfiguration.class,
			// HAPI runs its own Quartz schedulers; Boot's extra one would only cost threads.
			QuartzAutoConfiguration.class
		})
@Import({
	JpaR4Config.class, // R4 DAOs, resource providers, system provider
	HapiJpaConfig.class, // storage, search, expunge, delete services
	JpaBatch2Config.class, // batch2 job persistence + maintenance (used by $export, _expunge)
	Batch2JobsConfig.class, // the job definitions, incl. bulk export and its provider
	ThreadPoolFactoryConfig.class,
	// Not used for subscriptions here, but other HAPI beans need its IBrokerClient.
	SubscriptionChannelConfig.class
})
public class HapiServerApplication {

	private static final Logger ourLog = LoggerFactory.getLogger(HapiServerApplication.class);

	public static void main(String[] args) {
		SpringApplication.run(HapiServerApplication.class, args);
	}

	/** Mounts HAPI's servlet at /fhir/*; load-on-startup so the first request is not slow. */
	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServletRegistration(RestfulServer restfulServer) {
		ServletRegistrationBean<RestfulServer> registration =
				new ServletRegistrationBean<>(restfulServer, "/fhir/*");
		registration.setName("fhir");
		registration.setLoadOnStartup(1);
		return registration;
	}

	@EventListener(ApplicationReadyEvent.class)
	public void logReady(ApplicationReadyEvent event) {
		String port = event.getApplicationContext().getEnvironment().getProperty("local.server.port");
		ourLog.info(
				"FHIR R4 server ready at http://127.0.0.1:{}/fhir (data in {})",
				port,
				DataDirectory.resolve());
	}
}
