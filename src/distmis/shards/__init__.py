"""The shards as every trainer and evaluator reads them: ``info.json`` (:mod:`.info`), the record
format (:mod:`.records`, :mod:`.example`, :mod:`.tfrecord`), reading a split into reusable
blocks (:mod:`.parts`, :mod:`.buffers`, :mod:`.heap`) and the node cache (:mod:`.node_cache`)."""
