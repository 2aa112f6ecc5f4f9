--
-- PostgreSQL database dump
--


-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: blob_owners; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.blob_owners (
    sha256 character varying(64) NOT NULL,
    owner character varying(42) NOT NULL,
    size bigint NOT NULL,
    created_ms bigint NOT NULL
);


--
-- Name: canary_plans; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.canary_plans (
    check_id character varying(64) NOT NULL,
    canary_id character varying(64) NOT NULL,
    input_sha character varying(64) NOT NULL,
    input_size bigint NOT NULL,
    rows text NOT NULL
);


--
-- Name: check_assignments; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.check_assignments (
    task_id character varying(64) NOT NULL,
    node character varying(42) NOT NULL,
    until_ms bigint NOT NULL
);


--
-- Name: check_exclusions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.check_exclusions (
    task_id character varying(64) NOT NULL,
    node character varying(42) NOT NULL
);


--
-- Name: checks; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.checks (
    check_id character varying(64) NOT NULL,
    root_id character varying(64) NOT NULL,
    job_id character varying(64) NOT NULL,
    kind character varying(16) NOT NULL,
    subject_task character varying(64) NOT NULL,
    subject_attempt integer NOT NULL,
    subject_node character varying(42) NOT NULL,
    subject_output character varying(64) NOT NULL,
    rows text NOT NULL,
    state character varying(16) NOT NULL,
    outcome character varying(16) NOT NULL,
    checker character varying(42),
    checker_output character varying(64),
    created_ms bigint NOT NULL
);


--
-- Name: credits; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.credits (
    id integer NOT NULL,
    node character varying(42) NOT NULL,
    job_id character varying(64) NOT NULL,
    task_id character varying(64) NOT NULL,
    attempt integer NOT NULL,
    amount_wei numeric(78,0) NOT NULL,
    created_ms bigint NOT NULL,
    epoch integer,
    void boolean NOT NULL
);


--
-- Name: credits_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.credits_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: credits_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.credits_id_seq OWNED BY public.credits.id;


--
-- Name: epoch_earnings; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.epoch_earnings (
    epoch integer NOT NULL,
    node character varying(42) NOT NULL,
    cumulative_wei numeric(78,0) NOT NULL
);


--
-- Name: epochs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.epochs (
    epoch integer NOT NULL,
    root character varying(64) NOT NULL,
    state character varying(16) NOT NULL,
    total_wei numeric(78,0) NOT NULL,
    charged_wei numeric(78,0) NOT NULL,
    outbox_key character varying(200) NOT NULL,
    tx_hash character varying(66),
    error text NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL
);


--
-- Name: events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events (
    id integer NOT NULL,
    job_id character varying(64) NOT NULL,
    seq integer NOT NULL,
    kind character varying(24) NOT NULL,
    time_ms bigint NOT NULL,
    task_index integer NOT NULL,
    node character varying(42) NOT NULL,
    message text NOT NULL,
    tasks_done integer NOT NULL,
    tasks_total integer NOT NULL,
    state character varying(16) NOT NULL
);


--
-- Name: events_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.events_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: events_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.events_id_seq OWNED BY public.events.id;


--
-- Name: failure_claims; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.failure_claims (
    task_id character varying(64) NOT NULL,
    node character varying(42) NOT NULL,
    kind character varying(16) NOT NULL,
    claimed_ms bigint NOT NULL,
    confirmed boolean NOT NULL
);


--
-- Name: job_policies; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.job_policies (
    job_id character varying(64) NOT NULL,
    policy text NOT NULL,
    required_stake_wei numeric(78,0) NOT NULL
);


--
-- Name: job_prices; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.job_prices (
    job_id character varying(64) NOT NULL,
    reward_per_task_wei numeric(78,0) NOT NULL,
    budget_wei numeric(78,0) NOT NULL,
    credited_wei numeric(78,0) NOT NULL,
    void_reason text NOT NULL
);


--
-- Name: jobs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.jobs (
    job_id character varying(64) NOT NULL,
    submitter character varying(42) NOT NULL,
    kind character varying(16) NOT NULL,
    state character varying(16) NOT NULL,
    spec_json bytea NOT NULL,
    spec_hash character varying(64) NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    tasks_total integer NOT NULL,
    tasks_done integer NOT NULL,
    task_failures integer NOT NULL,
    result_sha character varying(64),
    result_size bigint,
    error text NOT NULL,
    event_seq integer NOT NULL
);


--
-- Name: meta; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.meta (
    key character varying(64) NOT NULL,
    value text NOT NULL
);


--
-- Name: node_earnings; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.node_earnings (
    node character varying(42) NOT NULL,
    earned_wei numeric(78,0) NOT NULL,
    charged_wei numeric(78,0) NOT NULL
);


--
-- Name: node_reputation; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.node_reputation (
    address character varying(42) NOT NULL,
    consecutive_valid integer NOT NULL,
    verified integer NOT NULL,
    caught integer NOT NULL
);


--
-- Name: nodes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.nodes (
    address character varying(42) NOT NULL,
    capabilities text NOT NULL,
    device_kind character varying(16) NOT NULL,
    memory_bytes bigint NOT NULL,
    registered_ms bigint NOT NULL,
    last_seen_ms bigint NOT NULL,
    draining boolean NOT NULL,
    completed integer NOT NULL,
    failures integer NOT NULL,
    rejections integer NOT NULL,
    consecutive_failures integer NOT NULL,
    backoff_until_ms bigint NOT NULL
);


--
-- Name: outbox; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.outbox (
    id integer NOT NULL,
    key character varying(200) NOT NULL,
    action character varying(32) NOT NULL,
    payload text NOT NULL,
    state character varying(16) NOT NULL,
    blocking boolean NOT NULL,
    nonce bigint,
    tx_hash character varying(66),
    raw_tx bytea,
    attempts integer NOT NULL,
    last_error text NOT NULL,
    next_try_ms bigint NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL
);


--
-- Name: outbox_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.outbox_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: outbox_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.outbox_id_seq OWNED BY public.outbox.id;


--
-- Name: receipts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.receipts (
    task_id character varying(64) NOT NULL,
    attempt integer NOT NULL,
    node character varying(42) NOT NULL,
    input_hash character varying(64) NOT NULL,
    output_hash character varying(64) NOT NULL,
    commitment character varying(64) NOT NULL,
    signature bytea NOT NULL,
    received_ms bigint NOT NULL
);


--
-- Name: referee_rulings; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.referee_rulings (
    check_id character varying(64) NOT NULL,
    job_id character varying(64) NOT NULL,
    state character varying(16) NOT NULL,
    rows_limit integer NOT NULL,
    output_sha character varying(64),
    error text NOT NULL,
    created_ms bigint NOT NULL
);


--
-- Name: sessions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.sessions (
    token_hash character varying(64) NOT NULL,
    address character varying(42) NOT NULL,
    expires_ms bigint NOT NULL
);


--
-- Name: slashes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.slashes (
    task_id character varying(64) NOT NULL,
    attempt integer NOT NULL,
    node character varying(42) NOT NULL,
    job_id character varying(64) NOT NULL,
    amount_wei numeric(78,0) NOT NULL,
    taken_wei numeric(78,0),
    beneficiary character varying(42) NOT NULL,
    correct_output character varying(64) NOT NULL,
    state character varying(16) NOT NULL,
    executable_ms bigint,
    outbox_key character varying(200) NOT NULL,
    tx_hash character varying(66),
    error text NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL
);


--
-- Name: submitter_sessions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.submitter_sessions (
    token_hash character varying(64) NOT NULL,
    address character varying(42) NOT NULL,
    expires_ms bigint NOT NULL
);


--
-- Name: tasks; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.tasks (
    task_id character varying(64) NOT NULL,
    job_id character varying(64) NOT NULL,
    idx integer NOT NULL,
    state character varying(16) NOT NULL,
    job_created_ms bigint NOT NULL,
    kind character varying(16) NOT NULL,
    device character varying(16) NOT NULL,
    min_memory_bytes bigint NOT NULL,
    model_sha character varying(64),
    model_size bigint,
    input_sha character varying(64) NOT NULL,
    input_size bigint NOT NULL,
    rows integer NOT NULL,
    settings text NOT NULL,
    memory_limit_bytes bigint NOT NULL,
    time_limit_ms integer NOT NULL,
    max_attempts integer NOT NULL,
    attempt integer NOT NULL,
    failures integer NOT NULL,
    node character varying(42),
    leased_ms bigint,
    deadline_ms bigint,
    last_failed_node character varying(42),
    last_failed_ms bigint,
    output_sha character varying(64),
    output_size bigint
);


--
-- Name: training_audits; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.training_audits (
    task_id character varying(64) NOT NULL,
    attempt integer NOT NULL,
    job_id character varying(64) NOT NULL,
    round_no integer NOT NULL,
    node character varying(42) NOT NULL,
    output_sha character varying(64) NOT NULL,
    segment integer NOT NULL,
    steps text NOT NULL,
    revealed text NOT NULL,
    max_bytes bigint NOT NULL,
    state character varying(16) NOT NULL,
    reason text NOT NULL,
    created_ms bigint NOT NULL,
    deadline_ms bigint NOT NULL,
    settled_ms bigint,
    replay_ms integer
);


--
-- Name: training_rounds; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.training_rounds (
    job_id character varying(64) NOT NULL,
    round_no integer NOT NULL,
    closed_ms bigint NOT NULL,
    workers integer NOT NULL,
    slots text NOT NULL,
    rows integer NOT NULL,
    train_loss double precision,
    eval_loss double precision,
    eval_accuracy double precision,
    bytes_up bigint NOT NULL,
    weights_sha character varying(64) NOT NULL,
    weights_size bigint NOT NULL,
    momentum_sha character varying(64) NOT NULL,
    momentum_size bigint NOT NULL
);


--
-- Name: trust_earnings; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trust_earnings (
    address character varying(42) NOT NULL,
    submitter character varying(42) NOT NULL,
    earned_wei numeric(78,0) NOT NULL,
    results integer NOT NULL
);


--
-- Name: upload_days; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.upload_days (
    owner character varying(42) NOT NULL,
    day bigint NOT NULL,
    bytes bigint NOT NULL
);


--
-- Name: used_nonces; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.used_nonces (
    nonce character varying(128) NOT NULL,
    expires_ms bigint NOT NULL
);


--
-- Name: credits id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.credits ALTER COLUMN id SET DEFAULT nextval('public.credits_id_seq'::regclass);


--
-- Name: events id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ALTER COLUMN id SET DEFAULT nextval('public.events_id_seq'::regclass);


--
-- Name: outbox id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox ALTER COLUMN id SET DEFAULT nextval('public.outbox_id_seq'::regclass);


--
-- Data for Name: blob_owners; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: canary_plans; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: check_assignments; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: check_exclusions; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: checks; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: credits; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.credits VALUES (1, '0xabababababababababababababababababababab', 'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd', '0101010101010101010101010101010101010101010101010101010101010101', 1, 57896044618658097711785492504343953926634992332820282019728792003956564819975, 2500, NULL, false);


--
-- Data for Name: epoch_earnings; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: epochs; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: events; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: failure_claims; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: job_policies; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: job_prices; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.job_prices VALUES ('cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd', 1000000000000000000000000000000, 1606938044258990275541962092341162602522202993782792835301376, 57896044618658097711785492504343953926634992332820282019728792003956564819975, '');


--
-- Data for Name: jobs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.jobs VALUES ('cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd', '0xabababababababababababababababababababab', 'inference', 'done', '\x7b7d', 'efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef', 1000, 3000, 2, 2, 0, NULL, NULL, '', 4);


--
-- Data for Name: meta; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.meta VALUES ('schema_version', '1');
INSERT INTO public.meta VALUES ('epoch_interval_ms', '30000');


--
-- Data for Name: node_earnings; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: node_reputation; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: nodes; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.nodes VALUES ('0xabababababababababababababababababababab', '{"device": "cpu"}', 'cpu', 8589934592, 1000, 2000, false, 7, 1, 0, 0, 0);


--
-- Data for Name: outbox; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: receipts; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: referee_rulings; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: sessions; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: slashes; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: submitter_sessions; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: tasks; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: training_audits; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: training_rounds; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: trust_earnings; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: upload_days; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: used_nonces; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Name: credits_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.credits_id_seq', 1, true);


--
-- Name: events_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.events_id_seq', 1, false);


--
-- Name: outbox_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.outbox_id_seq', 1, false);


--
-- Name: blob_owners blob_owners_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.blob_owners
    ADD CONSTRAINT blob_owners_pkey PRIMARY KEY (sha256, owner);


--
-- Name: canary_plans canary_plans_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.canary_plans
    ADD CONSTRAINT canary_plans_pkey PRIMARY KEY (check_id);


--
-- Name: check_assignments check_assignments_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.check_assignments
    ADD CONSTRAINT check_assignments_pkey PRIMARY KEY (task_id);


--
-- Name: check_exclusions check_exclusions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.check_exclusions
    ADD CONSTRAINT check_exclusions_pkey PRIMARY KEY (task_id, node);


--
-- Name: checks checks_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.checks
    ADD CONSTRAINT checks_pkey PRIMARY KEY (check_id);


--
-- Name: credits credits_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.credits
    ADD CONSTRAINT credits_pkey PRIMARY KEY (id);


--
-- Name: epoch_earnings epoch_earnings_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.epoch_earnings
    ADD CONSTRAINT epoch_earnings_pkey PRIMARY KEY (epoch, node);


--
-- Name: epochs epochs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.epochs
    ADD CONSTRAINT epochs_pkey PRIMARY KEY (epoch);


--
-- Name: events events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);


--
-- Name: failure_claims failure_claims_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.failure_claims
    ADD CONSTRAINT failure_claims_pkey PRIMARY KEY (task_id, node);


--
-- Name: job_policies job_policies_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.job_policies
    ADD CONSTRAINT job_policies_pkey PRIMARY KEY (job_id);


--
-- Name: job_prices job_prices_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.job_prices
    ADD CONSTRAINT job_prices_pkey PRIMARY KEY (job_id);


--
-- Name: jobs jobs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (job_id);


--
-- Name: meta meta_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.meta
    ADD CONSTRAINT meta_pkey PRIMARY KEY (key);


--
-- Name: node_earnings node_earnings_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.node_earnings
    ADD CONSTRAINT node_earnings_pkey PRIMARY KEY (node);


--
-- Name: node_reputation node_reputation_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.node_reputation
    ADD CONSTRAINT node_reputation_pkey PRIMARY KEY (address);


--
-- Name: nodes nodes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.nodes
    ADD CONSTRAINT nodes_pkey PRIMARY KEY (address);


--
-- Name: outbox outbox_key_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_key_key UNIQUE (key);


--
-- Name: outbox outbox_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);


--
-- Name: receipts receipts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.receipts
    ADD CONSTRAINT receipts_pkey PRIMARY KEY (task_id, attempt);


--
-- Name: referee_rulings referee_rulings_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.referee_rulings
    ADD CONSTRAINT referee_rulings_pkey PRIMARY KEY (check_id);


--
-- Name: sessions sessions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (token_hash);


--
-- Name: slashes slashes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.slashes
    ADD CONSTRAINT slashes_pkey PRIMARY KEY (task_id, attempt);


--
-- Name: submitter_sessions submitter_sessions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.submitter_sessions
    ADD CONSTRAINT submitter_sessions_pkey PRIMARY KEY (token_hash);


--
-- Name: tasks tasks_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_pkey PRIMARY KEY (task_id);


--
-- Name: training_audits training_audits_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.training_audits
    ADD CONSTRAINT training_audits_pkey PRIMARY KEY (task_id, attempt);


--
-- Name: training_rounds training_rounds_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.training_rounds
    ADD CONSTRAINT training_rounds_pkey PRIMARY KEY (job_id, round_no);


--
-- Name: trust_earnings trust_earnings_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trust_earnings
    ADD CONSTRAINT trust_earnings_pkey PRIMARY KEY (address, submitter);


--
-- Name: upload_days upload_days_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.upload_days
    ADD CONSTRAINT upload_days_pkey PRIMARY KEY (owner, day);


--
-- Name: credits uq_credits_task_attempt; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.credits
    ADD CONSTRAINT uq_credits_task_attempt UNIQUE (task_id, attempt);


--
-- Name: used_nonces used_nonces_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.used_nonces
    ADD CONSTRAINT used_nonces_pkey PRIMARY KEY (nonce);


--
-- Name: ix_blob_owners_owner; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_blob_owners_owner ON public.blob_owners USING btree (owner);


--
-- Name: ix_checks_job; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_checks_job ON public.checks USING btree (job_id, state);


--
-- Name: ix_checks_root; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_checks_root ON public.checks USING btree (root_id);


--
-- Name: ix_credits_epoch; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_credits_epoch ON public.credits USING btree (epoch, void);


--
-- Name: ix_credits_job; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_credits_job ON public.credits USING btree (job_id, epoch);


--
-- Name: ix_events_job_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX ix_events_job_seq ON public.events USING btree (job_id, seq);


--
-- Name: ix_jobs_submitter; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_jobs_submitter ON public.jobs USING btree (submitter);


--
-- Name: ix_outbox_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_outbox_state ON public.outbox USING btree (state, id);


--
-- Name: ix_referee_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_referee_state ON public.referee_rulings USING btree (state);


--
-- Name: ix_slashes_job; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_slashes_job ON public.slashes USING btree (job_id);


--
-- Name: ix_slashes_node; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_slashes_node ON public.slashes USING btree (node, state);


--
-- Name: ix_submitter_sessions_address; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_submitter_sessions_address ON public.submitter_sessions USING btree (address, expires_ms);


--
-- Name: ix_tasks_job; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_tasks_job ON public.tasks USING btree (job_id, idx);


--
-- Name: ix_tasks_pending; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_tasks_pending ON public.tasks USING btree (state, job_created_ms, idx);


--
-- Name: ix_training_audits_job_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_training_audits_job_id ON public.training_audits USING btree (job_id);


--
-- Name: sessions sessions_address_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_address_fkey FOREIGN KEY (address) REFERENCES public.nodes(address);


--
-- Name: tasks tasks_job_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(job_id);


--
-- Name: training_audits training_audits_job_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.training_audits
    ADD CONSTRAINT training_audits_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(job_id);


--
-- Name: training_rounds training_rounds_job_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.training_rounds
    ADD CONSTRAINT training_rounds_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(job_id);


--
-- PostgreSQL database dump complete
--


