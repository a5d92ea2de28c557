"""The durable history: the SQL schema and its migrations, the stream-to-PostgreSQL writer, the
post-round comparison, reconciliation of Redis against PostgreSQL, and restore of the hot wallet
from PostgreSQL."""
