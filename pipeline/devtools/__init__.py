"""What the demo and the tests use to stand in for the world: a tiny offline Molmo2 (`tiny_model`), sample videos (`samples`) and a local S3 server (`seaweed`)."""
