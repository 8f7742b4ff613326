"""The review queue: which predictions reviewers should see first (`queue`)."""
