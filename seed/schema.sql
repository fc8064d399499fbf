-- rankbench schema (docs/contract.md). Feature vectors are float4 arrays: 30 per user, 10 per item.
CREATE TABLE users (id bigint PRIMARY KEY, features real[] NOT NULL);
CREATE TABLE items (id bigint PRIMARY KEY, features real[] NOT NULL);
-- What was seeded, so that a second `make seed` can tell the tables are already right.
CREATE TABLE rankbench_meta (key text PRIMARY KEY, value text NOT NULL);
