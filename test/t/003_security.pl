# Roles and training jobs: privileges and row-level security on the data,
# roles without LOGIN, isolation of each role's jobs and adapters, model
# registration, and SQL the extension runs with its owner's rights.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;

my $tiny = $ENV{PEFT_TINY_MODEL_DIR};
plan skip_all => 'PEFT_TINY_MODEL_DIR is not set' unless $tiny && -d $tiny;

my $node = PostgreSQL::Test::Cluster->new('security');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 16");
$node->start;

# reviews: long jobs; small, secret, revocable, rls_reviews: quick ones.
$node->safe_psql('postgres', qq{
	CREATE EXTENSION peft;
	SELECT peft_register_model('tiny', '$tiny');
	@{[ reviews_sql('reviews', 20000) ]}
	@{[ reviews_sql('small', 600) ]}
	@{[ reviews_sql('secret', 600) ]}
	@{[ reviews_sql('revocable', 600) ]}
	@{[ reviews_sql('rls_reviews', 600) ]}
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	CREATE ROLE robot NOLOGIN;
	CREATE ROLE reader LOGIN IN ROLE pg_read_server_files;
	GRANT robot TO alice;
	GRANT SELECT ON small TO alice, bob, robot;
	GRANT SELECT ON reviews TO bob;
	GRANT SELECT ON revocable, rls_reviews TO alice;
	ALTER TABLE rls_reviews ENABLE ROW LEVEL SECURITY;
	CREATE POLICY some_rows ON rls_reviews FOR SELECT TO alice USING (id % 3 <> 0);
	CREATE SCHEMA alice_tools AUTHORIZATION alice;
});
my $LONG = '{"epochs": 500, "batch_size": 8}';
my $QUICK = '{"epochs": 1, "batch_size": 8}';

sub connstr_as
{
	my ($role) = @_;
	return $node->connstr('postgres') . " user=$role";
}

# Run SQL as a role; returns (stdout, stderr).
sub psql_as
{
	my ($role, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $sql, stdout => \$out, stderr => \$err, connstr => connstr_as($role));
	return ($out, $err);
}

# Run SQL as a role; dies on error.
sub safe_as
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, connstr => connstr_as($role));
}

sub train_sql
{
	my ($adapter, $data, $options, $wait) = @_;
	$data =~ s/'/''/g;
	return "SELECT peft_train('$adapter', 'tiny', '$data', 'body', 'sentiment', "
	  . "options => '$options', wait => " . ($wait ? 'true' : 'false') . ")";
}

sub su
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# ---- 1. no SELECT on the data: refused at call time, no job ----------------
my ($out, $err) = psql_as('alice', train_sql('no_select', 'secret', $QUICK, 0));
like($err, qr/permission denied for table secret/, 'no SELECT: peft_train fails with permission denied');
is(su("SELECT count(*) FROM peft.job_rows WHERE adapter = 'no_select'"), '0', 'no SELECT: no job row');

# ---- 2. row-level security: the job trains on the rows the role sees ----------
my $job = safe_as('alice', train_sql('alice_rls', 'rls_reviews', $QUICK, 1));
my $visible = safe_as('alice', "SELECT count(*) FROM rls_reviews");
my $total = su("SELECT count(*) FROM rls_reviews");
cmp_ok($visible, '<', $total, "rls: alice sees $visible of $total rows");
is(su("SELECT (metrics->>'train_rows')::int + (metrics->>'valid_rows')::int + (metrics->>'skipped_rows')::int "
	  . "FROM peft.adapters WHERE job = $job"),
	$visible, 'rls: train_rows + valid_rows + skipped_rows is the visible count, not the table count');

# ---- 3. a role without LOGIN trains through SET ROLE ----------------------------
is(su("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'robot'"), 'f', 'nologin: robot cannot log in');
$job = safe_as('alice', "SET ROLE robot; " . train_sql('robot_model', 'small', $QUICK, 1));
is(su("SELECT status, owner FROM peft.jobs WHERE id = $job"), 'succeeded|robot',
	'nologin: the job of a NOLOGIN role succeeds and is owned by it');
is(su("SELECT owner FROM peft.adapters WHERE job = $job"), 'robot', 'nologin: the adapter is owned by it');
is(safe_as('alice', "SELECT count(*) FROM peft.adapters WHERE name = 'robot_model'"), '1',
	'nologin: a member of the role sees its adapter');

# ---- 5. registering models --------------------------------------------------
($out, $err) = psql_as('alice', "SELECT peft_register_model('tiny_alice', '$tiny')");
like($err, qr/permission denied to register a model/, 'register: refused to an ordinary role');
is(safe_as('reader', "SELECT name FROM peft_register_model('tiny_reader', '$tiny')"), 'tiny_reader',
	'register: allowed to a member of pg_read_server_files');
is(su("SELECT owner FROM peft.models WHERE name = 'tiny_reader'"), 'reader', 'register: the model row is owned by it');

# ---- 4. one role cannot reach another's jobs and adapters ---------------------
my $bob_job = safe_as('bob', train_sql('bob_model', 'small', $QUICK, 1));
my $bob_long = safe_as('bob', train_sql('bob_long', 'reviews', $LONG, 0));
ok($node->poll_query_until('postgres', "SELECT status = 'running' FROM peft.jobs WHERE id = $bob_long"),
	"isolation: bob's long job runs (and holds the only job slot)");

# Queued behind it: a job on a table alice is about to lose access to (test 6),
# and two jobs of alice and bob racing for one new adapter name.
my $revoked = safe_as('alice', train_sql('alice_revoked', 'revocable', $QUICK, 0));
my $contested_alice = safe_as('alice', train_sql('contested', 'small', $QUICK, 0));
my $contested_bob = safe_as('bob', train_sql('contested', 'small', $QUICK, 0));
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM peft.jobs WHERE id IN ($revoked, $contested_alice, $contested_bob) "
	. "AND status = 'queued' AND worker_pid IS NOT NULL"),
	'isolation: three jobs queued behind it');

is(safe_as('alice', "SELECT count(*) FROM peft.jobs WHERE owner = 'bob'"), '0', "isolation: alice sees none of bob's jobs");
is(safe_as('alice', "SELECT count(*) FROM peft.adapters WHERE owner = 'bob'"), '0', "isolation: alice sees none of bob's adapters");
($out, $err) = psql_as('alice', "SELECT status FROM peft_wait($bob_job)");
like($err, qr/job $bob_job does not exist/, "isolation: alice cannot wait for bob's job");
($out, $err) = psql_as('alice', "SELECT peft_cancel($bob_long)");
like($err, qr/job $bob_long does not exist/, "isolation: alice cannot cancel bob's job");
is(su("SELECT status, cancel_requested FROM peft.job_rows WHERE id = $bob_long"), 'running|f',
	"isolation: bob's job is still running, no cancel recorded");
($out, $err) = psql_as('alice', "SELECT * FROM peft_predict('bob_model', 'movie good today')");
like($err, qr/adapter "bob_model" does not exist or has no active version/, "isolation: alice cannot predict with bob's adapter");
($out, $err) = psql_as('alice', "SELECT peft_embed('tiny', 'movie good today', 'bob_model')");
like($err, qr/adapter "bob_model" does not exist/, "isolation: alice cannot embed through bob's adapter");
($out, $err) = psql_as('alice', "SELECT peft_activate('bob_model', 1)");
like($err, qr/adapter "bob_model" has no version 1/, "isolation: alice cannot activate bob's adapter");
($out, $err) = psql_as('alice', "SELECT peft_drop_adapter('bob_model')");
like($err, qr/adapter "bob_model" does not exist/, "isolation: alice cannot drop bob's adapter");
($out, $err) = psql_as('alice', "SELECT peft_drop_adapter('bob_model', 1)");
like($err, qr/adapter "bob_model" has no version 1/, "isolation: alice cannot drop a version of bob's adapter");
# Adapter names are shared: training a version under bob's name would
# deactivate bob's, and alice's peft_drop_adapter would then delete bob's too.
($out, $err) = psql_as('alice', train_sql('bob_model', 'small', $QUICK, 0));
like($err, qr/adapter name "bob_model" belongs to another role/, "isolation: alice cannot train under bob's adapter name");
is(su("SELECT string_agg(version || ':' || owner || ':' || active, ',') FROM peft.adapters WHERE name = 'bob_model'"),
	'1:bob:true', "isolation: bob's adapter is intact and still active");
like(safe_as('bob', "SELECT label FROM peft_predict('bob_model', 'movie good today')"), qr/^(positive|negative|neutral)$/,
	'isolation: bob still predicts with it');
is(su("SELECT string_agg(DISTINCT owner, ',' ORDER BY owner) FROM peft.jobs"), 'alice,bob,robot',
	'isolation: a superuser sees the jobs of every role');
is(su("SELECT string_agg(DISTINCT owner, ',' ORDER BY owner) FROM peft.adapters"), 'alice,bob,robot',
	'isolation: a superuser sees the adapters of every role');

# ---- 6. the data is read with the caller's rights, not the worker's ----------
($out, $err) = psql_as('alice', train_sql('query_secret', 'SELECT body, sentiment FROM secret', $QUICK, 0));
like($err, qr/permission denied for table secret/, 'data query: a query reading a table the caller cannot read fails');
is(su("SELECT count(*) FROM peft.job_rows WHERE adapter = 'query_secret'"), '0', 'data query: no job row');
# The queued job of alice passed the call-time check; its worker, connected as
# the extension owner (a superuser), must still read as alice.
su("REVOKE SELECT ON revocable FROM alice");
is(safe_as('bob', "SELECT peft_cancel($bob_long)"), 't', 'data query: bob cancels his own job');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM peft.jobs WHERE id IN ($revoked, $contested_alice, $contested_bob) "
	. "AND status IN ('succeeded', 'failed', 'canceled')"),
	'data query: the queued jobs run and end');
like(su("SELECT status || ': ' || error FROM peft.jobs WHERE id = $revoked"),
	qr/^failed: permission denied for table revocable/,
	"data query: the worker reads as the caller (fails once the caller's SELECT is revoked)");
is(su("SELECT count(*) FROM peft.adapters WHERE job = $revoked"), '0', 'data query: no adapter row');
# Of the two racing jobs the first to finish takes the name; the other is
# refused when it saves (the call-time check passed for both).
is(su("SELECT string_agg(status, ',' ORDER BY status) FROM peft.jobs WHERE adapter = 'contested'"),
	'failed,succeeded', 'shared name: one of two racing roles gets the name');
like(su("SELECT error FROM peft.jobs WHERE adapter = 'contested' AND status = 'failed'"),
	qr/belongs to another role/, 'shared name: the other job fails saying why');
is(su("SELECT count(*) FROM peft.adapters WHERE name = 'contested'"), '1', 'shared name: one adapter version');

# ---- 7. SQL run with the extension owner's rights cannot be hijacked ----------
is(su(q{
	SELECT count(*) FROM pg_proc p
	JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
	     AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
	JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'peft'
	WHERE p.prosecdef
	  AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')}),
	'0', 'search_path: no SECURITY DEFINER function of the extension leaves search_path unpinned');
cmp_ok(su(q{SELECT count(*) FROM pg_depend WHERE classid = 'pg_proc'::regclass AND deptype = 'e'
	AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'peft')}), '>', 10,
	'search_path: the query above sees the extension functions');

# The C functions write the catalog as the extension owner, and the worker
# runs as it: operators of the caller's, put first in search_path, must not
# run with those rights.  Each operator makes alice a superuser if it runs as
# anyone else.
safe_as('alice', q{
	CREATE FUNCTION alice_tools.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		IF current_user <> 'alice' THEN
			EXECUTE 'ALTER ROLE alice SUPERUSER';
		END IF;
		RETURN true;
	END $$;
	CREATE FUNCTION alice_tools.texteq(text, text) RETURNS boolean LANGUAGE sql
		AS $$ SELECT alice_tools.escalate() AND $1 OPERATOR(pg_catalog.=) $2 $$;
	CREATE FUNCTION alice_tools.int8eq(bigint, bigint) RETURNS boolean LANGUAGE sql
		AS $$ SELECT alice_tools.escalate() AND $1 OPERATOR(pg_catalog.=) $2 $$;
	CREATE OPERATOR alice_tools.= (LEFTARG = text, RIGHTARG = text, FUNCTION = alice_tools.texteq);
	CREATE OPERATOR alice_tools.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = alice_tools.int8eq);
});
($out, $err) = psql_as('alice',
	"SET search_path = alice_tools, pg_catalog; SELECT public.peft_activate('alice_rls', 1)");
is($err, '', 'search_path: peft_activate works with a hostile search_path');
is(su("SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'"), 'f',
	"search_path: the caller's operators do not run as the extension owner");
# A data query that changes the worker's search_path for what follows.
($out, $err) = psql_as('alice', train_sql('hijack',
	"SELECT body, sentiment FROM public.small WHERE pg_catalog.set_config('search_path', 'alice_tools, pg_catalog', false) IS NOT NULL",
	$QUICK, 1));
is(su("SELECT status FROM peft.jobs WHERE adapter = 'hijack'"), 'succeeded', 'search_path: a data query that sets search_path trains');
is(su("SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'"), 'f',
	"search_path: settings changed by the data query do not reach the worker's own statements");

$node->stop;
done_testing();
