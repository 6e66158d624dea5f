-- Image classification is billed by the number of images classified.
ALTER TABLE usage_records ADD COLUMN images BIGINT NOT NULL DEFAULT 0;
