"""Real-time serving on the node (docs/SERVING.md): the agent's Serve stream (stream), one
replica per assigned endpoint (replica) batching its requests (batcher) into a warm sandboxed
child (process, worker, compute) that speaks length-prefixed frames (frames)."""
