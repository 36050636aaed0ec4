"""What the notifier's domain talks to: Redis, RabbitMQ, outgoing HTTP."""
