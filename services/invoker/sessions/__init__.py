"""Sessions: a graph, its execution and status, kept in a store and run by the queue."""
