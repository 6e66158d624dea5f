-- Speech recognition is billed by the length of the audio, in seconds.
ALTER TABLE usage_records ADD COLUMN audio_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
