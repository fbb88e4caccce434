"""PostgreSQL adapters: the durable session store (psycopg 3, called in worker threads)."""
