"""Engine benchmark: shelfwork against Huey and Celery (run `make bench`)."""
