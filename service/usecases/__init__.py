"""The use cases: the flows that take fal's news to jobs and a user's request to fal.

Each module is one thing the service does (submit a job, cancel it, take a webhook in, follow
jobs, sweep the overdue ones). They sit above `service.fal` (which knows fal and nothing of jobs)
and `service.jobs` (which knows the store and nothing of fal), and are the only place both meet.
"""
