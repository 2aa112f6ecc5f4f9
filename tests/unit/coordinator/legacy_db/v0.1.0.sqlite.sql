PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO meta VALUES('schema_version','1');
INSERT INTO meta VALUES('epoch_interval_ms','30000');
CREATE TABLE submitter_sessions (
	token_hash VARCHAR(64) NOT NULL, 
	address VARCHAR(42) NOT NULL, 
	expires_ms BIGINT NOT NULL, 
	PRIMARY KEY (token_hash)
);
CREATE TABLE blob_owners (
	sha256 VARCHAR(64) NOT NULL, 
	owner VARCHAR(42) NOT NULL, 
	size BIGINT NOT NULL, 
	created_ms BIGINT NOT NULL, 
	PRIMARY KEY (sha256, owner)
);
CREATE TABLE upload_days (
	owner VARCHAR(42) NOT NULL, 
	day BIGINT NOT NULL, 
	bytes BIGINT NOT NULL, 
	PRIMARY KEY (owner, day)
);
CREATE TABLE nodes (
	address VARCHAR(42) NOT NULL, 
	capabilities TEXT NOT NULL, 
	device_kind VARCHAR(16) NOT NULL, 
	memory_bytes BIGINT NOT NULL, 
	registered_ms BIGINT NOT NULL, 
	last_seen_ms BIGINT NOT NULL, 
	draining BOOLEAN NOT NULL, 
	completed INTEGER NOT NULL, 
	failures INTEGER NOT NULL, 
	rejections INTEGER NOT NULL, 
	consecutive_failures INTEGER NOT NULL, 
	backoff_until_ms BIGINT NOT NULL, 
	PRIMARY KEY (address)
);
INSERT INTO nodes VALUES('0xabababababababababababababababababababab','{"device": "cpu"}','cpu',8589934592,1000,2000,0,7,1,0,0,0);
CREATE TABLE used_nonces (
	nonce VARCHAR(128) NOT NULL, 
	expires_ms BIGINT NOT NULL, 
	PRIMARY KEY (nonce)
);
CREATE TABLE jobs (
	job_id VARCHAR(64) NOT NULL, 
	submitter VARCHAR(42) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	spec_json BLOB NOT NULL, 
	spec_hash VARCHAR(64) NOT NULL, 
	created_ms BIGINT NOT NULL, 
	updated_ms BIGINT NOT NULL, 
	tasks_total INTEGER NOT NULL, 
	tasks_done INTEGER NOT NULL, 
	task_failures INTEGER NOT NULL, 
	result_sha VARCHAR(64), 
	result_size BIGINT, 
	error TEXT NOT NULL, 
	event_seq INTEGER NOT NULL, 
	PRIMARY KEY (job_id)
);
INSERT INTO jobs VALUES('cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd','0xabababababababababababababababababababab','inference','done',X'7b7d','efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef',1000,3000,2,2,0,NULL,NULL,'',4);
CREATE TABLE failure_claims (
	task_id VARCHAR(64) NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	claimed_ms BIGINT NOT NULL, 
	confirmed BOOLEAN NOT NULL, 
	PRIMARY KEY (task_id, node)
);
CREATE TABLE receipts (
	task_id VARCHAR(64) NOT NULL, 
	attempt INTEGER NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	input_hash VARCHAR(64) NOT NULL, 
	output_hash VARCHAR(64) NOT NULL, 
	commitment VARCHAR(64) NOT NULL, 
	signature BLOB NOT NULL, 
	received_ms BIGINT NOT NULL, 
	PRIMARY KEY (task_id, attempt)
);
CREATE TABLE events (
	id INTEGER NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	seq INTEGER NOT NULL, 
	kind VARCHAR(24) NOT NULL, 
	time_ms BIGINT NOT NULL, 
	task_index INTEGER NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	message TEXT NOT NULL, 
	tasks_done INTEGER NOT NULL, 
	tasks_total INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE job_prices (
	job_id VARCHAR(64) NOT NULL, 
	reward_per_task_wei VARCHAR(78) NOT NULL, 
	budget_wei VARCHAR(78) NOT NULL, 
	credited_wei VARCHAR(78) NOT NULL, 
	void_reason TEXT NOT NULL, 
	PRIMARY KEY (job_id)
);
INSERT INTO job_prices VALUES('cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd','1000000000000000000000000000000','1606938044258990275541962092341162602522202993782792835301376','57896044618658097711785492504343953926634992332820282019728792003956564819975','');
CREATE TABLE credits (
	id INTEGER NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	task_id VARCHAR(64) NOT NULL, 
	attempt INTEGER NOT NULL, 
	amount_wei VARCHAR(78) NOT NULL, 
	created_ms BIGINT NOT NULL, 
	epoch INTEGER, 
	void BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_credits_task_attempt UNIQUE (task_id, attempt)
);
INSERT INTO credits VALUES(1,'0xabababababababababababababababababababab','cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd','0101010101010101010101010101010101010101010101010101010101010101',1,'57896044618658097711785492504343953926634992332820282019728792003956564819975',2500,NULL,0);
CREATE TABLE node_earnings (
	node VARCHAR(42) NOT NULL, 
	earned_wei VARCHAR(78) NOT NULL, 
	charged_wei VARCHAR(78) NOT NULL, 
	PRIMARY KEY (node)
);
CREATE TABLE epochs (
	epoch INTEGER NOT NULL, 
	root VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	total_wei VARCHAR(78) NOT NULL, 
	charged_wei VARCHAR(78) NOT NULL, 
	outbox_key VARCHAR(200) NOT NULL, 
	tx_hash VARCHAR(66), 
	error TEXT NOT NULL, 
	created_ms BIGINT NOT NULL, 
	updated_ms BIGINT NOT NULL, 
	PRIMARY KEY (epoch)
);
CREATE TABLE epoch_earnings (
	epoch INTEGER NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	cumulative_wei VARCHAR(78) NOT NULL, 
	PRIMARY KEY (epoch, node)
);
CREATE TABLE outbox (
	id INTEGER NOT NULL, 
	"key" VARCHAR(200) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	payload TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	blocking BOOLEAN NOT NULL, 
	nonce BIGINT, 
	tx_hash VARCHAR(66), 
	raw_tx BLOB, 
	attempts INTEGER NOT NULL, 
	last_error TEXT NOT NULL, 
	next_try_ms BIGINT NOT NULL, 
	created_ms BIGINT NOT NULL, 
	updated_ms BIGINT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE ("key")
);
CREATE TABLE slashes (
	task_id VARCHAR(64) NOT NULL, 
	attempt INTEGER NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	amount_wei VARCHAR(78) NOT NULL, 
	taken_wei VARCHAR(78), 
	beneficiary VARCHAR(42) NOT NULL, 
	correct_output VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	executable_ms BIGINT, 
	outbox_key VARCHAR(200) NOT NULL, 
	tx_hash VARCHAR(66), 
	error TEXT NOT NULL, 
	created_ms BIGINT NOT NULL, 
	updated_ms BIGINT NOT NULL, 
	PRIMARY KEY (task_id, attempt)
);
CREATE TABLE job_policies (
	job_id VARCHAR(64) NOT NULL, 
	policy TEXT NOT NULL, 
	required_stake_wei VARCHAR(78) NOT NULL, 
	PRIMARY KEY (job_id)
);
CREATE TABLE checks (
	check_id VARCHAR(64) NOT NULL, 
	root_id VARCHAR(64) NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	subject_task VARCHAR(64) NOT NULL, 
	subject_attempt INTEGER NOT NULL, 
	subject_node VARCHAR(42) NOT NULL, 
	subject_output VARCHAR(64) NOT NULL, 
	rows TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	checker VARCHAR(42), 
	checker_output VARCHAR(64), 
	created_ms BIGINT NOT NULL, 
	PRIMARY KEY (check_id)
);
CREATE TABLE check_exclusions (
	task_id VARCHAR(64) NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	PRIMARY KEY (task_id, node)
);
CREATE TABLE check_assignments (
	task_id VARCHAR(64) NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	until_ms BIGINT NOT NULL, 
	PRIMARY KEY (task_id)
);
CREATE TABLE referee_rulings (
	check_id VARCHAR(64) NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	rows_limit INTEGER NOT NULL, 
	output_sha VARCHAR(64), 
	error TEXT NOT NULL, 
	created_ms BIGINT NOT NULL, 
	PRIMARY KEY (check_id)
);
CREATE TABLE node_reputation (
	address VARCHAR(42) NOT NULL, 
	consecutive_valid INTEGER NOT NULL, 
	verified INTEGER NOT NULL, 
	caught INTEGER NOT NULL, 
	PRIMARY KEY (address)
);
CREATE TABLE trust_earnings (
	address VARCHAR(42) NOT NULL, 
	submitter VARCHAR(42) NOT NULL, 
	earned_wei VARCHAR(78) NOT NULL, 
	results INTEGER NOT NULL, 
	PRIMARY KEY (address, submitter)
);
CREATE TABLE canary_plans (
	check_id VARCHAR(64) NOT NULL, 
	canary_id VARCHAR(64) NOT NULL, 
	input_sha VARCHAR(64) NOT NULL, 
	input_size BIGINT NOT NULL, 
	rows TEXT NOT NULL, 
	PRIMARY KEY (check_id)
);
CREATE TABLE sessions (
	token_hash VARCHAR(64) NOT NULL, 
	address VARCHAR(42) NOT NULL, 
	expires_ms BIGINT NOT NULL, 
	PRIMARY KEY (token_hash), 
	FOREIGN KEY(address) REFERENCES nodes (address)
);
CREATE TABLE tasks (
	task_id VARCHAR(64) NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	idx INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	job_created_ms BIGINT NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	device VARCHAR(16) NOT NULL, 
	min_memory_bytes BIGINT NOT NULL, 
	model_sha VARCHAR(64), 
	model_size BIGINT, 
	input_sha VARCHAR(64) NOT NULL, 
	input_size BIGINT NOT NULL, 
	rows INTEGER NOT NULL, 
	settings TEXT NOT NULL, 
	memory_limit_bytes BIGINT NOT NULL, 
	time_limit_ms INTEGER NOT NULL, 
	max_attempts INTEGER NOT NULL, 
	attempt INTEGER NOT NULL, 
	failures INTEGER NOT NULL, 
	node VARCHAR(42), 
	leased_ms BIGINT, 
	deadline_ms BIGINT, 
	last_failed_node VARCHAR(42), 
	last_failed_ms BIGINT, 
	output_sha VARCHAR(64), 
	output_size BIGINT, 
	PRIMARY KEY (task_id), 
	FOREIGN KEY(job_id) REFERENCES jobs (job_id)
);
CREATE TABLE training_rounds (
	job_id VARCHAR(64) NOT NULL, 
	round_no INTEGER NOT NULL, 
	closed_ms BIGINT NOT NULL, 
	workers INTEGER NOT NULL, 
	slots TEXT NOT NULL, 
	rows INTEGER NOT NULL, 
	train_loss FLOAT, 
	eval_loss FLOAT, 
	eval_accuracy FLOAT, 
	bytes_up BIGINT NOT NULL, 
	weights_sha VARCHAR(64) NOT NULL, 
	weights_size BIGINT NOT NULL, 
	momentum_sha VARCHAR(64) NOT NULL, 
	momentum_size BIGINT NOT NULL, 
	PRIMARY KEY (job_id, round_no), 
	FOREIGN KEY(job_id) REFERENCES jobs (job_id)
);
CREATE TABLE training_audits (
	task_id VARCHAR(64) NOT NULL, 
	attempt INTEGER NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	round_no INTEGER NOT NULL, 
	node VARCHAR(42) NOT NULL, 
	output_sha VARCHAR(64) NOT NULL, 
	segment INTEGER NOT NULL, 
	steps TEXT NOT NULL, 
	revealed TEXT NOT NULL, 
	max_bytes BIGINT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	reason TEXT NOT NULL, 
	created_ms BIGINT NOT NULL, 
	deadline_ms BIGINT NOT NULL, 
	settled_ms BIGINT, 
	replay_ms INTEGER, 
	PRIMARY KEY (task_id, attempt), 
	FOREIGN KEY(job_id) REFERENCES jobs (job_id)
);
CREATE INDEX ix_submitter_sessions_address ON submitter_sessions (address, expires_ms);
CREATE INDEX ix_blob_owners_owner ON blob_owners (owner);
CREATE INDEX ix_jobs_submitter ON jobs (submitter);
CREATE UNIQUE INDEX ix_events_job_seq ON events (job_id, seq);
CREATE INDEX ix_credits_epoch ON credits (epoch, void);
CREATE INDEX ix_credits_job ON credits (job_id, epoch);
CREATE INDEX ix_outbox_state ON outbox (state, id);
CREATE INDEX ix_slashes_node ON slashes (node, state);
CREATE INDEX ix_slashes_job ON slashes (job_id);
CREATE INDEX ix_checks_root ON checks (root_id);
CREATE INDEX ix_checks_job ON checks (job_id, state);
CREATE INDEX ix_referee_state ON referee_rulings (state);
CREATE INDEX ix_tasks_job ON tasks (job_id, idx);
CREATE INDEX ix_tasks_pending ON tasks (state, job_created_ms, idx);
CREATE INDEX ix_training_audits_job_id ON training_audits (job_id);
COMMIT;
