"""The Google Cloud Pub/Sub connector: config, credentials, client, source and target."""
