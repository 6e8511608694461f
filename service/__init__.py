"""fal-jobs: fal.ai queue jobs with durable, live status."""
