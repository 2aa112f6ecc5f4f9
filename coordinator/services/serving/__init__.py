"""Real-time serving: endpoints, their replicas and requests (docs/SERVING.md)."""
