"""What bt keeps on disk besides market data and the catalog: the content-addressed results store
(``results``: one file per task key, the source of truth), the runs' strategy sources and jobs by
hash (``archive``), and the file helpers both use (``fsutil``: atomic writes, write-once files)."""
