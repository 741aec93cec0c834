"""What a person reads: HTML transcripts of episodes and the run's plots."""
