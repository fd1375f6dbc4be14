-- Which data plane supervises each OPA instance (OPA label `gateway_dataplane`), so that a
-- sidecar counts as an instance from the moment it starts, and a restarted sidecar retires
-- the rows of its predecessors.
ALTER TABLE opa_instances ADD COLUMN dataplane_id text;
CREATE INDEX opa_instances_dataplane ON opa_instances (tenant, environment, dataplane_id);
