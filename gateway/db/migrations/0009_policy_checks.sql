-- Tested policy versions (README "Tested policy versions").
-- * tests: the version's Rego test modules (`*_test.rego`) by file name. Kept apart from
--   `modules`, which is exactly what goes into the OPA bundle, so tests never reach OPA.
-- * checks: what the upload's checks found (opa fmt, opa test, coverage); NULL for versions
--   uploaded before this migration (they count as versions without tests).
-- * created_by: who uploaded it (the same definition as 0011, which then changes nothing).
ALTER TABLE policy_versions ADD COLUMN tests jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE policy_versions ADD COLUMN checks jsonb;
ALTER TABLE policy_versions ADD COLUMN IF NOT EXISTS created_by text NOT NULL DEFAULT 'admin';
