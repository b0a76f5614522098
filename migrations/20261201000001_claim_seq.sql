-- claim_seq: the queue sequence number of the claim under which a worker applied the event
-- (claim.lua takes it from the same sequence as reservations). The consistency check adds
-- back what MySQL applied under claims numbered after its Redis snapshot, using this index,
-- so it never reads the backlog waiting in Redis. NULL for rows written before this column.
ALTER TABLE stock_log
    ADD COLUMN claim_seq BIGINT NULL,
    ADD KEY stock_log_claim_seq (claim_seq);
