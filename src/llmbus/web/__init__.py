"""Stop 3 and 4's web pages for people: the labeling UI and the human-review queue."""
