"""The worker process: the one program that runs shards, whatever the transport.

Local workers (forked from a warm fork server, or started as ``python -m backtest.worker``), SSH
workers on farm hosts and the in-process runner of the inline and Dask executors all run shards
through ``shard.Runner``; a worker process speaks ``protocol``'s frames on stdin/stdout. This
package imports nothing heavy: a worker imports numpy, numba and the engine when it starts.
"""
