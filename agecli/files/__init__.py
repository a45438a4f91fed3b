"""Files agecli writes and reads: atomic writes, where a command may write, run folders, shards, safe loading."""
