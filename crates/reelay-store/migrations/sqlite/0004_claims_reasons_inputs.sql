-- How many times each generation has been claimed. A claim of a generation still unfinished
-- means every earlier lease on it was lost (its holder died or stopped heartbeating, or the
-- server restarted), so the engine fails a job that keeps losing its leases instead of handing
-- a poison pill out forever.
ALTER TABLE generations ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;

-- Why a worker says a generation failed ("the model ran out of GPU memory"), shown to the
-- customer in `error.details.reason`; NULL when there is nothing to add to the code.
ALTER TABLE generations ADD COLUMN failure_reason TEXT;

-- The images a generation was created with, as `name.ext` file names under
-- `<data dir>/inputs/<generation id>/`, comma-separated; '' for text to video.
ALTER TABLE generations ADD COLUMN inputs TEXT NOT NULL DEFAULT '';
