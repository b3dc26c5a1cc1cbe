"""Broker connectors: RabbitMQ, Google Cloud Pub/Sub."""
