-- Keel placement, schema version 1: the truth several deciders share.
--
-- Owners are what carries a generation: a host's whole provider tree, or one shared provider
-- (as scheduling's in-memory state counts them; ids are the cluster's owner positions). Every
-- change to an owner's allocations bumps its generation, and a claim commits only if the
-- generations it was decided on are still current (OpenStack Placement's protocol). Inventories
-- also carry their usage under a CHECK, so even a decider with a wrong picture cannot
-- over-allocate: the commit fails instead.

CREATE TABLE keel_cluster (
    id integer PRIMARY KEY CHECK (id = 1),
    spec json NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE keel_owners (
    id integer PRIMARY KEY,
    name text NOT NULL UNIQUE,
    generation bigint NOT NULL DEFAULT 0,
    disabled boolean NOT NULL DEFAULT false
);

CREATE TABLE keel_providers (
    name text PRIMARY KEY,
    owner integer NOT NULL REFERENCES keel_owners,
    parent text REFERENCES keel_providers,
    host text
);

CREATE TABLE keel_inventories (
    provider text NOT NULL REFERENCES keel_providers,
    class text NOT NULL,
    total bigint NOT NULL,
    reserved bigint NOT NULL,
    min_unit bigint NOT NULL,
    max_unit bigint NOT NULL,
    step_size bigint NOT NULL,
    allocation_ratio double precision NOT NULL,
    capacity bigint NOT NULL,
    used bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, class),
    CONSTRAINT keel_within_capacity CHECK (used >= 0 AND used <= capacity)
);

CREATE TABLE keel_server_groups (
    name text PRIMARY KEY,
    policy text NOT NULL,
    max_per_host integer,
    generation bigint NOT NULL DEFAULT 0
);

-- One row per VM holding an allocation; `generation` is the consumer generation (bumped by each
-- move), `token` names the commit that wrote it (a decider whose connection broke mid-commit reads
-- it to learn whether its commit happened).
CREATE TABLE keel_consumers (
    id text PRIMARY KEY,
    host text NOT NULL,
    generation bigint NOT NULL,
    token bigint NOT NULL,
    project text,
    usr text,
    server_group text,
    usage jsonb NOT NULL,
    placement jsonb NOT NULL
);

CREATE TABLE keel_allocations (
    consumer text NOT NULL,
    provider text NOT NULL,
    class text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    PRIMARY KEY (consumer, provider, class)
);

-- Limits per project (usr = '') or per user of a project; class 'instances' counts VMs. Usage is
-- kept only where a limit is set, and maintained in the same transaction as every claim.
CREATE TABLE keel_quotas (
    project text NOT NULL,
    usr text NOT NULL DEFAULT '',
    class text NOT NULL,
    lim bigint NOT NULL,
    used bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project, usr, class)
);

-- What changed, one row per committed transaction: deciders follow it to keep their replicas.
-- `xid` lets a reader find every row committed since its last look without missing a transaction
-- that took its sequence number earlier but committed later.
CREATE TABLE keel_changes (
    seq bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    items jsonb NOT NULL
);
CREATE INDEX keel_changes_xid ON keel_changes (xid);

-- Commits a batch of operations in one transaction. `batch`: {"atomic": bool, "items": [...]},
-- each item one of
--   {"op": "place", "consumer", "token", "host", "check": [[owner, generation], ...],
--    "group": name|null, "group_spec": {"policy", "max_per_host"}|null, "group_gen": n|null,
--    "project", "user", "usage": [[class, amount], ...], "alloc": [[provider, class, amount], ...],
--    "placement": {...}}
--   {"op": "release", "consumer", "cgen": n|null}
--   {"op": "move", "consumer", "cgen": n|null, "token", "host", "check", "group_gen",
--    "alloc", "placement"}
--   {"op": "disable", "host", "disabled": bool}
-- Every row it will write is locked first, in one order (consumers, owners, groups, quotas), so
-- concurrent batches never deadlock. Items are then checked and applied in order: an item whose
-- checks fail writes nothing and marks its owners and server group, so that later items of the
-- batch decided on top of it fail too (their generations could otherwise match by coincidence). With "atomic", the first failure aborts the whole batch (SQLSTATE KL409,
-- the failure as JSON in the message). Returns {"seq", "results": [...]}, one result per item:
-- {"ok": true, "gens": [[owner, generation], ...], "group": [name, generation]|null, "cgen"} or
-- {"ok": false, "error": "conflict"|"duplicate"|"unknown_consumer"|"quota"|"group"|"disabled",
--  "detail"}.
CREATE FUNCTION keel_commit(batch jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    is_atomic boolean := coalesce((batch->>'atomic')::boolean, false);
    item jsonb;
    results jsonb := '[]';
    changes jsonb := '[]';
    tainted integer[] := '{}';
    tainted_groups text[] := '{}';
    op text;
    cid text;
    check_ids integer[];
    check_gens bigint[];
    own_ids integer[];
    old_ids integer[];
    bad text;
    fail text;
    detail text;
    gens jsonb;
    grp text;
    grp_gen bigint;
    grp_row keel_server_groups%ROWTYPE;
    con keel_consumers%ROWTYPE;
    q record;
    new_cgen bigint;
    seqno bigint;
    result jsonb;
    out_placement jsonb;
BEGIN
    -- Lock what the batch will write, in a fixed order.
    PERFORM 1 FROM keel_consumers
     WHERE id IN (SELECT i->>'consumer' FROM jsonb_array_elements(batch->'items') i
                   WHERE i->>'op' IN ('release', 'move'))
     ORDER BY id FOR UPDATE;
    PERFORM 1 FROM keel_owners
     WHERE id IN (SELECT (c->>0)::integer FROM jsonb_array_elements(batch->'items') i,
                         jsonb_array_elements(coalesce(i->'check', '[]')) c
                  UNION
                  SELECT p.owner FROM jsonb_array_elements(batch->'items') i
                    JOIN keel_allocations a ON a.consumer = i->>'consumer'
                    JOIN keel_providers p ON p.name = a.provider
                   WHERE i->>'op' IN ('release', 'move')
                  UNION
                  SELECT o.id FROM jsonb_array_elements(batch->'items') i
                    JOIN keel_consumers c ON c.id = i->>'consumer'
                    JOIN keel_owners o ON o.name = c.host
                   WHERE i->>'op' IN ('release', 'move')
                  UNION
                  SELECT o.id FROM jsonb_array_elements(batch->'items') i
                    JOIN keel_owners o ON o.name = i->>'host'
                   WHERE i->>'op' = 'disable')
     ORDER BY id FOR UPDATE;
    INSERT INTO keel_server_groups (name, policy, max_per_host)
    SELECT DISTINCT ON (i->>'group') i->>'group', i->'group_spec'->>'policy',
           (i->'group_spec'->>'max_per_host')::integer
      FROM jsonb_array_elements(batch->'items') i
     WHERE i->>'op' = 'place' AND i->>'group' IS NOT NULL
    ON CONFLICT (name) DO NOTHING;
    PERFORM 1 FROM keel_server_groups
     WHERE name IN (SELECT i->>'group' FROM jsonb_array_elements(batch->'items') i
                    UNION
                    SELECT c.server_group FROM jsonb_array_elements(batch->'items') i
                      JOIN keel_consumers c ON c.id = i->>'consumer')
     ORDER BY name FOR UPDATE;
    PERFORM 1 FROM keel_quotas
     WHERE project IN (SELECT i->>'project' FROM jsonb_array_elements(batch->'items') i
                       UNION
                       SELECT c.project FROM jsonb_array_elements(batch->'items') i
                         JOIN keel_consumers c ON c.id = i->>'consumer')
     ORDER BY project, usr, class FOR UPDATE;

    FOR item IN SELECT value FROM jsonb_array_elements(batch->'items') LOOP
        op := item->>'op';
        cid := item->>'consumer';
        fail := NULL;
        detail := NULL;
        gens := NULL;
        grp := NULL;
        grp_gen := NULL;
        new_cgen := NULL;
        check_ids := ARRAY(SELECT (c->>0)::integer FROM jsonb_array_elements(coalesce(item->'check', '[]')) c);
        check_gens := ARRAY(SELECT (c->>1)::bigint FROM jsonb_array_elements(coalesce(item->'check', '[]')) c);
        old_ids := '{}';
        con := NULL;

        -- Checks: nothing is written until every one has passed.
        IF op IN ('release', 'move') THEN
            SELECT * INTO con FROM keel_consumers WHERE id = cid;
            IF NOT FOUND THEN
                fail := 'unknown_consumer';
                detail := format('unknown consumer `%s`', cid);
            ELSIF item->>'cgen' IS NOT NULL AND con.generation <> (item->>'cgen')::bigint THEN
                fail := 'conflict';
                detail := format('consumer `%s` is at generation %s, the decision saw %s',
                                 cid, con.generation, item->>'cgen');
            ELSE
                old_ids := ARRAY(SELECT DISTINCT p.owner FROM keel_allocations a
                                   JOIN keel_providers p ON p.name = a.provider
                                  WHERE a.consumer = cid
                                 UNION SELECT o.id FROM keel_owners o WHERE o.name = con.host);
            END IF;
        END IF;
        IF fail IS NULL AND op = 'disable' THEN
            old_ids := ARRAY(SELECT id FROM keel_owners WHERE name = item->>'host');
            IF cardinality(old_ids) = 0 THEN
                fail := 'unknown_host';
                detail := format('unknown host `%s`', item->>'host');
            END IF;
        END IF;
        IF fail IS NULL AND op IN ('place', 'move') THEN
            IF check_ids && tainted
               OR coalesce(item->>'group', con.server_group) = ANY(tainted_groups) THEN
                fail := 'conflict';
                detail := 'decided on top of an earlier claim of this batch that failed';
            ELSE
                SELECT string_agg(format('`%s` is at generation %s, the decision saw %s',
                                         o.name, o.generation, e.gen), '; ')
                  INTO bad
                  FROM unnest(check_ids, check_gens) AS e(id, gen)
                  LEFT JOIN keel_owners o ON o.id = e.id
                 WHERE o.id IS NULL OR o.generation <> e.gen;
                IF bad IS NOT NULL THEN
                    fail := 'conflict';
                    detail := bad;
                ELSIF EXISTS (SELECT 1 FROM keel_owners WHERE name = item->>'host' AND disabled) THEN
                    fail := 'disabled';
                    detail := format('host `%s` is disabled', item->>'host');
                END IF;
            END IF;
            IF fail IS NULL AND op = 'place' AND EXISTS (SELECT 1 FROM keel_consumers WHERE id = cid) THEN
                fail := 'duplicate';
                detail := format('consumer `%s` already holds an allocation', cid);
            END IF;
            grp := coalesce(item->>'group', con.server_group);
            IF fail IS NULL AND grp IS NOT NULL THEN
                SELECT * INTO grp_row FROM keel_server_groups WHERE name = grp;
                IF op = 'place' AND (grp_row.policy IS DISTINCT FROM item->'group_spec'->>'policy'
                    OR grp_row.max_per_host IS DISTINCT FROM (item->'group_spec'->>'max_per_host')::integer) THEN
                    fail := 'group';
                    detail := format('server group `%s` exists with policy %s (max_per_host %s)',
                                     grp, grp_row.policy, coalesce(grp_row.max_per_host::text, 'None'));
                ELSIF item->>'group_gen' IS NOT NULL AND grp_row.generation <> (item->>'group_gen')::bigint THEN
                    fail := 'conflict';
                    detail := format('server group `%s` is at generation %s, the decision saw %s',
                                     grp, grp_row.generation, item->>'group_gen');
                END IF;
            END IF;
            IF fail IS NULL AND op = 'place' AND item->>'project' IS NOT NULL THEN
                SELECT format('quota of %s exceeded: %s limit %s, used %s, requested %s',
                              CASE WHEN k.usr = '' THEN format('project `%s`', k.project)
                                   ELSE format('user `%s` of project `%s`', k.usr, k.project) END,
                              k.class, k.lim, k.used, u.amount)
                  INTO bad
                  FROM keel_quotas k
                  JOIN (SELECT 'instances' AS class, 1::bigint AS amount
                        UNION ALL
                        SELECT c->>0, (c->>1)::bigint FROM jsonb_array_elements(item->'usage') c) u
                    ON u.class = k.class
                 WHERE k.project = item->>'project'
                   AND k.usr IN ('', coalesce(item->>'user', ''))
                   AND k.used + u.amount > k.lim
                 ORDER BY k.usr, k.class
                 LIMIT 1;
                IF bad IS NOT NULL THEN
                    fail := 'quota';
                    detail := bad;
                END IF;
            END IF;
        END IF;

        IF fail IS NOT NULL THEN
            IF is_atomic THEN
                RAISE EXCEPTION USING ERRCODE = 'KL409',
                    MESSAGE = jsonb_build_object('error', fail, 'detail', detail, 'consumer', cid)::text;
            END IF;
            tainted := tainted || check_ids || old_ids;
            tainted_groups := tainted_groups || coalesce(item->>'group', con.server_group);
            results := results || jsonb_build_array(
                jsonb_build_object('ok', false, 'error', fail, 'detail', detail));
            CONTINUE;
        END IF;

        -- Writes.
        own_ids := ARRAY(SELECT DISTINCT x FROM unnest(check_ids || old_ids) x);
        WITH bumped AS (
            UPDATE keel_owners SET generation = generation + 1,
                   disabled = CASE WHEN op = 'disable' THEN (item->>'disabled')::boolean ELSE disabled END
             WHERE id = ANY(own_ids)
            RETURNING id, generation)
        SELECT jsonb_agg(jsonb_build_array(id, generation) ORDER BY id) INTO gens FROM bumped;

        IF op IN ('release', 'move') THEN
            UPDATE keel_inventories i SET used = i.used - a.amount
              FROM keel_allocations a
             WHERE a.consumer = cid AND i.provider = a.provider AND i.class = a.class;
            DELETE FROM keel_allocations WHERE consumer = cid;
        END IF;
        IF op IN ('place', 'move') THEN
            INSERT INTO keel_allocations (consumer, provider, class, amount)
            SELECT cid, a->>0, a->>1, sum((a->>2)::bigint)
              FROM jsonb_array_elements(item->'alloc') a
             GROUP BY a->>0, a->>1
            HAVING sum((a->>2)::bigint) > 0;
            UPDATE keel_inventories i SET used = i.used + s.amount
              FROM (SELECT a->>0 AS provider, a->>1 AS class, sum((a->>2)::bigint) AS amount
                      FROM jsonb_array_elements(item->'alloc') a GROUP BY 1, 2) s
             WHERE i.provider = s.provider AND i.class = s.class;
        END IF;
        IF op = 'place' THEN
            new_cgen := 1;
            INSERT INTO keel_consumers (id, host, generation, token, project, usr, server_group,
                                        usage, placement)
            VALUES (cid, item->>'host', new_cgen, (item->>'token')::bigint, item->>'project',
                    item->>'user', grp, item->'usage', item->'placement');
            UPDATE keel_quotas k SET used = k.used + u.amount
              FROM (SELECT 'instances' AS class, 1::bigint AS amount
                    UNION ALL
                    SELECT c->>0, (c->>1)::bigint FROM jsonb_array_elements(item->'usage') c) u
             WHERE k.project = item->>'project' AND k.usr IN ('', coalesce(item->>'user', ''))
               AND k.class = u.class;
        ELSIF op = 'move' THEN
            new_cgen := con.generation + 1;
            UPDATE keel_consumers SET host = item->>'host', generation = new_cgen,
                   token = (item->>'token')::bigint, placement = item->'placement'
             WHERE id = cid;
        ELSIF op = 'release' THEN
            grp := con.server_group;
            UPDATE keel_quotas k SET used = greatest(k.used - u.amount, 0)
              FROM (SELECT 'instances' AS class, 1::bigint AS amount
                    UNION ALL
                    SELECT c->>0, (c->>1)::bigint FROM jsonb_array_elements(con.usage) c) u
             WHERE k.project = con.project AND k.usr IN ('', coalesce(con.usr, ''))
               AND k.class = u.class;
            DELETE FROM keel_consumers WHERE id = cid;
        END IF;
        IF grp IS NOT NULL AND op <> 'disable' THEN
            UPDATE keel_server_groups SET generation = generation + 1 WHERE name = grp
            RETURNING generation INTO grp_gen;
        END IF;

        out_placement := CASE WHEN op = 'release' THEN con.placement ELSE item->'placement' END;
        result := jsonb_build_object('ok', true, 'gens', coalesce(gens, '[]'),
                                     'group', CASE WHEN grp_gen IS NULL THEN NULL
                                                   ELSE jsonb_build_array(grp, grp_gen) END,
                                     'cgen', new_cgen);
        results := results || jsonb_build_array(result || jsonb_build_object('placement', out_placement));
        changes := changes || jsonb_build_array(result || jsonb_build_object(
            'op', op, 'consumer', cid, 'host', item->>'host', 'disabled', item->'disabled',
            'placement', out_placement));
    END LOOP;

    IF jsonb_array_length(changes) > 0 THEN
        INSERT INTO keel_changes (items) VALUES (changes) RETURNING seq INTO seqno;
    END IF;
    RETURN jsonb_build_object('seq', seqno, 'results', results);
END
$$;
