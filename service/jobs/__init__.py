"""Jobs: the wire types, the status machine (the one place that changes a job), the read queries."""
