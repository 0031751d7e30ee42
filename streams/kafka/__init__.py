"""Kafka plumbing shared by every process: client settings, topics, topic set-up, producing in
batches, reading to the end, broker features. aiokafka only, never Faust."""
