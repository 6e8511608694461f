"""Live job status: one LISTEN connection per process (listener), in-memory dispatch by request id
and user id (hub), and the Server-Sent Event streams that browsers and API clients read (streams)."""
