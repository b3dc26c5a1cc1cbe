"""The RabbitMQ connector (aio-pika): config, connection, source, target and settlement."""
