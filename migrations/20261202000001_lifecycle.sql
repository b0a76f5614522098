-- The life of a reservation after its deduction: a cancelled reservation whose delivery may
-- have reached MySQL is settled by a 'cancelled' row (so no later delivery deducts it), and
-- an applied one that is cancelled becomes 'released' in the transaction that adds its
-- quantity back. release_seq is the queue sequence number taken for that release: the
-- consistency check subtracts what MySQL released after its Redis snapshot, as it adds
-- back what MySQL applied after it (claim_seq).
ALTER TABLE stock_log
    MODIFY status ENUM('applied', 'rejected', 'cancelled', 'released') NOT NULL,
    ADD COLUMN release_seq BIGINT NULL,
    ADD KEY stock_log_release_seq (release_seq);
