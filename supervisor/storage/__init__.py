"""What the gate reads and writes on the node's disk: the configuration (validated once)
and the state store (locked, atomic)."""
