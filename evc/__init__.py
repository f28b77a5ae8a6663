"""EVC (Edge Vision Cluster): MQTT-based edge / fog / cloud messaging for vision at the edge."""
