"""fal.ai: the gateway (the one place that talks to fal), webhook signatures and intake, the
follower for jobs without webhooks, and the reconciliation sweep."""
