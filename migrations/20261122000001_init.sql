-- products: the source of truth for stock.
CREATE TABLE IF NOT EXISTS products (
    id         BIGINT      NOT NULL PRIMARY KEY,
    stock      BIGINT      NOT NULL,
    updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    CONSTRAINT products_stock_not_negative CHECK (stock >= 0)
) ENGINE = InnoDB;

-- stock_log: one row per event ever settled. Its primary key is what makes the MySQL effect
-- of an event exactly-once: a redelivered event finds its row and changes nothing.
-- seq is the Redis reservation sequence; the consistency check uses it (with its index) to
-- add back what MySQL applied after the check's Redis snapshot.
CREATE TABLE IF NOT EXISTS stock_log (
    event_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    product_id BIGINT      NOT NULL,
    qty        INT         NOT NULL,
    status     ENUM('applied', 'rejected') NOT NULL,
    seq        BIGINT      NULL,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    KEY stock_log_seq (seq)
) ENGINE = InnoDB;

-- stock_adjustments: operators' restocks (stock set / stock add), with the Redis sequence
-- number of their Redis half, so the check can order them against its snapshot.
CREATE TABLE IF NOT EXISTS stock_adjustments (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    seq        BIGINT      NOT NULL,
    product_id BIGINT      NOT NULL,
    delta      BIGINT      NOT NULL,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    KEY stock_adjustments_seq (seq)
) ENGINE = InnoDB;
