"""What the models are fed: log-mel features and their cache, clip sets and batches, cached embeddings, background recordings, the device."""
