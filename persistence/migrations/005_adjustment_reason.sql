-- Why the cashier moved money (docs/operations.md, Admin API): kept with each adjustment, and
-- with each refused one. Adjustments from before this migration have none.
ALTER TABLE adjustments ADD COLUMN reason text NOT NULL DEFAULT '';
ALTER TABLE refused_adjustments ADD COLUMN reason text NOT NULL DEFAULT '';
