-- The buyer of each settled event, and, when its reservation counted against a buyer limit,
-- the limit's epoch (the entry's `limit_epoch`). A refund after the reservation's Redis
-- record expired gives the buyer's units back from these: without them the buyer stayed
-- blocked by units already refunded. NULL for rows written before these columns, for events
-- without a buyer, and for reservations no limit counted.
ALTER TABLE stock_log
    ADD COLUMN buyer VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD COLUMN limit_epoch BIGINT NULL;
