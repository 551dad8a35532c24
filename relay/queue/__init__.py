"""The durable spool and local delivery (see :mod:`relay.queue.spool`)."""
