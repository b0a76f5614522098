-- The shard whose queue delivered (and numbered) each settled event: `claim_seq` and
-- `release_seq` are numbers of that shard's sequence. A product spread over several shards
-- (`stockq stock spread`) is reserved and claimed on each of them, so the consistency check
-- orders each row against the snapshot of its own shard. NULL for rows written before this
-- column, and for a queue that is not sharded: the product's own shard.
ALTER TABLE stock_log
    ADD COLUMN shard SMALLINT NULL;
