# Nobody gets in: model registration, model paths, the caller's rights on
# the data (privileges, row-level security, what a data query may do),
# identifiers, and SQL run with the extension owner's rights.
#
# 003_security.pl already covers, and this file does not repeat:
#  - register: refused to an ordinary role (alice), allowed to a member of
#    pg_read_server_files (section 5);
#  - no SELECT on the table: refused at call time, no job row (wait =>
#    false, section 1);
#  - row-level security: a policy TO alice, wait => true, the trained rows
#    are the visible ones (section 2);
#  - a data query reading a table the caller cannot read fails at call
#    time; a queued job fails in the worker once the caller's SELECT is
#    revoked (section 6);
#  - the extension's SECURITY DEFINER functions pin search_path (count of
#    offenders = 0), hostile operators through peft_activate and a data
#    query that changes search_path (section 7).
# Each item below asserts the property again from another side.
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(basename);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;

my $tiny = $ENV{PEFT_TINY_MODEL_DIR};
plan skip_all => 'PEFT_TINY_MODEL_DIR is not set' unless $tiny && -d $tiny;
my $tiny_real = abs_path($tiny);

my $node = PostgreSQL::Test::Cluster->new('security2');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 16");
$node->start;

$node->safe_psql('postgres', qq{
	CREATE EXTENSION peft;
	SELECT peft_register_model('tiny', '$tiny');
	@{[ reviews_sql('small', 300) ]}
	@{[ reviews_sql('secret', 300) ]}
	@{[ reviews_sql('colpriv', 300) ]}
	@{[ reviews_sql('shared_reviews', 600) ]}
	ALTER TABLE shared_reviews ADD COLUMN owner_role name;
	UPDATE shared_reviews SET owner_role = CASE WHEN id % 4 IN (0, 1) THEN 'alice'
	                                            WHEN id % 4 = 2 THEN 'bob' END;
	ALTER TABLE shared_reviews ENABLE ROW LEVEL SECURITY;
	CREATE POLICY mine ON shared_reviews FOR SELECT USING (owner_role = current_user);
	CREATE TABLE victim (x int);
	INSERT INTO victim VALUES (1);
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	CREATE ROLE ghost LOGIN;
	CREATE ROLE dbowner LOGIN CREATEDB CREATEROLE;
	ALTER DATABASE postgres OWNER TO dbowner;
	CREATE ROLE reader LOGIN IN ROLE pg_read_server_files;
	GRANT SELECT ON small, shared_reviews TO alice, bob, ghost;
	GRANT ALL ON victim TO alice;
	GRANT SELECT (id, body) ON colpriv TO alice;
	GRANT CREATE ON SCHEMA public TO alice;
});
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

sub safe_as
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, connstr => connstr_as($role));
}

sub su
{
	return $node->safe_psql('postgres', $_[0]);
}

sub lit
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

sub train_sql
{
	my ($adapter, $data, $input, $label, $wait) = @_;
	return "SELECT peft_train(" . lit($adapter) . ", 'tiny', " . lit($data) . ", " . lit($input) . ", "
	  . lit($label) . ", options => '$QUICK', wait => " . ($wait ? 'true' : 'false') . ")";
}

my ($out, $err);

# ---- 1. peft_register_model is refused to ordinary roles ---------------------------
my $models = su('SELECT count(*) FROM peft.models');
($out, $err) = psql_as('dbowner', "SELECT peft_register_model('by_dbowner', '$tiny')");
like($err, qr/permission denied to register a model/,
	'register: refused to a role with CREATEDB and CREATEROLE that owns the database');
safe_as('alice', qq{
	CREATE FUNCTION public.alice_register(n text, p text) RETURNS text LANGUAGE sql SECURITY DEFINER
		AS \$\$ SELECT (peft_register_model(n, p)).name \$\$;
});
($out, $err) = psql_as('bob', "SELECT public.alice_register('by_wrapper', '$tiny')");
like($err, qr/permission denied to register a model/,
	"register: a SECURITY DEFINER wrapper of an ordinary role's does not help (it runs as that role)");
is(safe_as('reader', "SELECT name FROM peft_register_model('by_reader', '$tiny')"), 'by_reader',
	'register: allowed while a member of pg_read_server_files');
su('REVOKE pg_read_server_files FROM reader');
($out, $err) = psql_as('reader', "SELECT peft_register_model('by_reader', '$tiny')");
like($err, qr/permission denied to register a model/, 'register: refused again once the membership is revoked');
is(su("SELECT count(*) FROM peft.models WHERE name IN ('by_dbowner', 'by_wrapper')"), '0',
	'register: a refused call records nothing');
su('GRANT pg_read_server_files TO reader');

# ---- 2. model paths: ".." and symbolic links (README: resolved, and the ------------
# resolved path stored; no list of allowed folders: registering is for roles
# that may read any server file anyway)
my $dir = PostgreSQL::Test::Utils::tempdir;
mkdir "$dir/models";
mkdir "$dir/models/sub";
mkdir "$dir/models/empty";
symlink($tiny_real, "$dir/models/link") or die "symlink: $!";
my $dotdot = "$dir/models/sub/../link";
is(safe_as('reader', "SELECT path FROM peft_register_model('via_dotdot', " . lit($dotdot) . ")"), $tiny_real,
	'path: ".." and a symbolic link out of the folder are resolved, the resolved path is returned');
is(su("SELECT path FROM peft.models WHERE name = 'via_dotdot'"), $tiny_real, 'path: and stored');
is(safe_as('reader', "SELECT path FROM peft_register_model('via_parent', "
	  . lit("$tiny/../" . basename($tiny)) . ")"), $tiny_real, 'path: a trailing "../name" is resolved too');
is(safe_as('reader', "SELECT path FROM peft_register_model('via_link', " . lit("$dir/models/link") . ")"),
	$tiny_real, 'path: a symbolic link to the folder is stored as its target');
# The link now points elsewhere: the registered model is still the folder it
# was resolved to, and registering through the link again fails validation
# without touching the row.
unlink "$dir/models/link";
symlink("$dir/models/empty", "$dir/models/link") or die "symlink: $!";
like(safe_as('alice', "SELECT array_length(peft_embed('via_link', 'good movie'), 1)"), qr/^\d+$/,
	'path: repointing the link later does not change what the model reads');
($out, $err) = psql_as('reader', "SELECT peft_register_model('via_link', " . lit("$dir/models/link") . ")");
like($err, qr/ERROR/, 'path: registering again through the repointed link fails (the folder is empty)');
is(su("SELECT path FROM peft.models WHERE name = 'via_link'"), $tiny_real, 'path: the registered row is unchanged');
($out, $err) = psql_as('reader', "SELECT peft_register_model('relative', 'models/link')");
like($err, qr/model path must be absolute/, 'path: a relative path is refused');
($out, $err) = psql_as('reader', "SELECT peft_register_model('missing', " . lit("$dir/models/nothing/../link") . ")");
like($err, qr/could not resolve model folder/, 'path: a path through a missing folder is refused');

# ---- 3. peft_train without SELECT on the data fails at call time ------------------
# (the table-level case is 003's; here the label column alone is missing)
for my $wait (0, 1)
{
	($out, $err) = psql_as('alice', train_sql("colpriv_$wait", 'colpriv', 'body', 'sentiment', $wait));
	like($err, qr/permission denied for table colpriv/,
		"no SELECT on the label column (wait => $wait): refused at call time");
	is(su("SELECT count(*) FROM peft.job_rows WHERE adapter = 'colpriv_$wait'"), '0',
		"no SELECT on the label column (wait => $wait): no job row");
}

# ---- 4. row-level security is applied by the worker, as the caller ---------------
# The policy compares owner_role with current_user: rows differ per role, so
# the counts only match if the worker evaluates it as the calling role.
# wait => false: the queued worker path (003 checks wait => true).
my %job;
$job{$_} = safe_as($_, train_sql("rls_$_", 'shared_reviews', 'body', 'sentiment', 0)) for qw(alice bob);
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 2 FROM peft.jobs WHERE id IN ($job{alice}, $job{bob}) AND status = 'succeeded'"),
	'rls: both jobs succeed');
for my $role (qw(alice bob))
{
	my $sees = safe_as($role, 'SELECT count(*) FROM shared_reviews');
	is(su("SELECT (metrics->>'train_rows')::int + (metrics->>'valid_rows')::int + (metrics->>'skipped_rows')::int "
		  . "FROM peft.adapters WHERE job = $job{$role}"),
		$sees, "rls: $role\'s job trained on the $sees rows $role sees");
}
isnt(safe_as('alice', 'SELECT count(*) FROM shared_reviews'), su('SELECT count(*) FROM shared_reviews'),
	'rls: which is not the whole table');

# A role that trained and was then dropped: its rows' owner names no role.
# Reading the catalog must not fail for everybody else (pg_has_role raised
# "role does not exist" in the policy), its rows stay hidden from them, and
# its adapter name stays taken.
safe_as('ghost', train_sql('ghost_model', 'small', 'body', 'sentiment', 1));
su('REVOKE ALL ON small, shared_reviews FROM ghost; DROP ROLE ghost');
is(safe_as('alice', "SELECT count(*) FROM peft.jobs WHERE owner = 'ghost'") . ','
	  . safe_as('alice', "SELECT count(*) FROM peft.adapters WHERE owner = 'ghost'"),
	'0,0', 'rls, dropped role: other roles can still read peft.jobs and peft.adapters, without its rows');
is(safe_as('alice', "SELECT count(*) FROM peft.jobs WHERE id = $job{alice}"), '1',
	'rls, dropped role: alice still sees her own job');
like(safe_as('alice', "SELECT label FROM peft_predict('rls_alice', 'movie good today')"),
	qr/^(positive|negative|neutral)$/, 'rls, dropped role: alice still predicts');
is(su("SELECT count(*) FROM peft.adapters WHERE owner = 'ghost'"), '1', 'rls, dropped role: a superuser sees its adapter');
($out, $err) = psql_as('alice', train_sql('ghost_model', 'small', 'body', 'sentiment', 0));
like($err, qr/adapter name "ghost_model" belongs to another role/,
	"rls, dropped role: its adapter name is not free for others to take");
is(su("SELECT peft_drop_adapter('ghost_model')"), '1', 'rls, dropped role: a superuser can drop its adapter');

# ---- 5. a data query cannot gain privileges: it runs as the caller ------------------
# In the worker, session_user is the extension owner (a superuser) and
# current_user the caller; these functions behave differently there.
safe_as('alice', q{
	CREATE TABLE public.alice_log (who name, sess name, pid int);
	CREATE FUNCTION public.log_row() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
	BEGIN
		INSERT INTO public.alice_log VALUES (current_user, session_user, pg_backend_pid());
		RETURN true;
	END $$;
	CREATE FUNCTION public.read_secret_in_worker() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
	BEGIN
		IF session_user <> current_user THEN
			PERFORM count(*) FROM public.secret;
		END IF;
		RETURN true;
	END $$;
	CREATE TABLE public.attempts (attempt text, sqlstate text, user_after name, superuser_after boolean);
	CREATE FUNCTION public.escalate_in_worker() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
	DECLARE
		stmt text;
	BEGIN
		IF session_user = current_user OR EXISTS (SELECT 1 FROM public.attempts) THEN
			RETURN true;
		END IF;
		FOREACH stmt IN ARRAY ARRAY[
			'SET ROLE ' || quote_ident(session_user),
			'SELECT set_config(''role'', ' || quote_literal(session_user) || ', false)',
			'SET SESSION AUTHORIZATION ' || quote_ident(session_user),
			'RESET ROLE',
			'ALTER ROLE alice SUPERUSER',
			'GRANT pg_read_server_files TO alice']
		LOOP
			BEGIN
				EXECUTE stmt;
				INSERT INTO public.attempts
					SELECT stmt, 'succeeded', current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
			EXCEPTION WHEN OTHERS THEN
				INSERT INTO public.attempts
					SELECT stmt, SQLSTATE, current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
			END;
		END LOOP;
		RETURN true;
	END $$;
});

# A function that writes: it runs as the caller, at call time and in the worker.
my $logged = safe_as('alice', train_sql('logging', 'SELECT body, sentiment FROM public.small WHERE public.log_row()',
	'body', 'sentiment', 1));
is(su("SELECT status FROM peft.jobs WHERE id = $logged"), 'succeeded', 'data query: a query calling a writing function trains');
my $worker_pid = su("SELECT worker_pid FROM peft.jobs WHERE id = $logged");
is(su("SELECT count(*) FROM alice_log WHERE pid = $worker_pid"), '300',
	'data query: the function ran in the worker, once per row');
is(su("SELECT string_agg(DISTINCT who, ',') FROM alice_log"), 'alice',
	'data query: current_user inside it was the caller every time, at call time and in the worker');
is(su("SELECT string_agg(DISTINCT sess, ',') FROM alice_log WHERE pid = $worker_pid"), su('SELECT current_user'),
	"data query: (in the worker the session is the extension owner's, yet the function did not run as it)");

# A query that reads a secret table only inside the worker.
($out, $err) = psql_as('alice', train_sql('sneaky', 'SELECT body, sentiment FROM public.small WHERE public.read_secret_in_worker()',
	'body', 'sentiment', 1));
like($err, qr/training job \d+ failed: permission denied for table secret/,
	'data query: reading a table the caller cannot read fails in the worker too');
is(su("SELECT count(*) FROM peft.adapters WHERE name = 'sneaky'"), '0', 'data query: no adapter row');

# Attempts to become the session's superuser from inside the worker.
safe_as('alice', train_sql('escalating', 'SELECT body, sentiment FROM public.small WHERE public.escalate_in_worker()',
	'body', 'sentiment', 1));
is(su("SELECT count(*) FROM attempts"), '6', 'data query: six escalation attempts were made in the worker');
is(su("SELECT string_agg(attempt || ' -> ' || sqlstate, '; ') FROM attempts WHERE sqlstate = 'succeeded' OR user_after <> 'alice' OR superuser_after"),
	'', 'data query: every one was refused, and the query stayed alice, not a superuser');
is(su("SELECT string_agg(DISTINCT sqlstate, ',') FROM attempts"), '42501',
	'data query: each with insufficient_privilege (42501)');
is(su("SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'") . su("SELECT pg_has_role('alice', 'pg_read_server_files', 'MEMBER')"),
	'ff', 'data query: alice gained nothing');

# ---- 6. identifiers are quoted ------------------------------------------------
su(qq{
	CREATE SCHEMA "Odd Schema";
	@{[ reviews_sql('"Odd Schema"."My ""Odd""; Table"', 300, '"Input Text"', '"Label; DROP TABLE victim; --"') ]}
	@{[ reviews_sql('"MixedCase"', 300, '"Body"', '"Label"') ]}
	@{[ reviews_sql('withdrawals', 300) ]}
	@{[ reviews_sql('selections', 300) ]}
	@{[ reviews_sql('tablets', 300) ]}
	@{[ reviews_sql('values_2024', 300) ]}
	GRANT USAGE ON SCHEMA "Odd Schema" TO alice;
	GRANT SELECT ON ALL TABLES IN SCHEMA "Odd Schema", public TO alice;
});
my $odd = safe_as('alice', train_sql('odd', '"Odd Schema"."My ""Odd""; Table"', 'Input Text',
	'Label; DROP TABLE victim; --', 1));
is(su("SELECT status FROM peft.jobs WHERE id = $odd"), 'succeeded',
	'identifiers: schema, table and columns with spaces, quotes, semicolons and upper case work');
my $mixed = safe_as('alice', train_sql('mixed', '"MixedCase"', 'Body', 'Label', 1));
is(su("SELECT status FROM peft.jobs WHERE id = $mixed"), 'succeeded', 'identifiers: a quoted upper-case table name works');
($out, $err) = psql_as('alice', train_sql('folded', 'MixedCase', 'Body', 'Label', 0));
like($err, qr/relation "mixedcase" does not exist/, 'identifiers: an unquoted name folds to lower case, as in SQL');
# Table names that begin with SELECT, WITH, TABLE or VALUES are names, not queries.
for my $t (qw(withdrawals selections tablets values_2024))
{
	my $id = safe_as('alice', train_sql("kw_$t", $t, 'body', 'sentiment', 1));
	is(su("SELECT status FROM peft.jobs WHERE id = $id"), 'succeeded', "identifiers: a table named $t is a table");
}
my %attacks = (
	'a second statement after the table name' => ['inj1', 'small; DROP TABLE victim', 'body', 'sentiment', qr/invalid name syntax/],
	'a second statement after a query' => ['inj2', 'SELECT body, sentiment FROM small; DROP TABLE victim', 'body', 'sentiment',
		qr/syntax error at or near ";"/],
	'a query closing its parenthesis to add statements' => ['inj6',
		'SELECT body, sentiment FROM small) AS peft_data; DROP TABLE victim; SELECT * FROM (SELECT 1', 'body', 'sentiment',
		qr/data must be a table, a view or a single SELECT query/],
	'a data-modifying WITH' => ['inj7', 'WITH d AS (DELETE FROM victim RETURNING 1) SELECT body, sentiment FROM small',
		'body', 'sentiment', qr/ERROR:  WITH clause containing a data-modifying statement must be at the top level/],
	'SQL in the input column' => ['inj3', 'small', 'body) FROM small; DROP TABLE victim; --', 'sentiment', qr/data has no column "body\) FROM small; DROP TABLE victim; --"/],
	'SQL in the label column' => ['inj4', 'small', 'body', 'sentiment::text FROM small; DROP TABLE victim; --', qr/data has no column "sentiment::text FROM small; DROP TABLE victim; --"/],
	'a quote in a quoted table name' => ['inj5', '"small""; DROP TABLE victim; --"', 'body', 'sentiment', qr/does not exist/],
	'SQL in the adapter name' => ["x'; DROP TABLE victim; --", 'small', 'body', 'sentiment', qr/invalid adapter name/],
);
for my $case (sort keys %attacks)
{
	my ($adapter, $data, $input, $label, $re) = @{ $attacks{$case} };
	($out, $err) = psql_as('alice', train_sql($adapter, $data, $input, $label, 1));
	like($err, $re, "injection ($case): refused");
}
is(su("SELECT count(*) FROM victim"), '1', 'injection: the table they tried to drop or empty is intact');
is(su("SELECT count(*) FROM peft.job_rows WHERE adapter ~ '^inj|DROP'"), '0', 'injection: no job row for any of them');

# Labels are stored as a text[]: quotes, backslashes, commas, braces and the
# word NULL must come back as they were.
su(q{
	CREATE TABLE odd_labels AS
	SELECT i AS id, 'row ' || i || ' of ' || (i % 6) AS body,
	       (ARRAY['NULL', 'a,b', 'x"y', 'back\slash', '{brace}', ' spaced '])[1 + i % 6] AS label
	FROM generate_series(1, 300) i;
	GRANT SELECT ON odd_labels TO alice;
});
safe_as('alice', train_sql('odd_labels', 'odd_labels', 'body', 'label', 1));
is(su(q{SELECT a.labels = (SELECT array_agg(DISTINCT label COLLATE "C" ORDER BY label COLLATE "C") FROM odd_labels)
	   AND array_position(a.labels, NULL) IS NULL
	FROM peft.adapters a WHERE name = 'odd_labels'}), 't',
	'labels: quotes, backslashes, commas, braces and "NULL" are stored exactly');
is(safe_as('alice', q{SELECT count(*) FROM peft_predict('odd_labels', 'row 1 of 1') p, odd_labels o WHERE p.label = o.label AND o.id = 1}),
	'1', 'labels: a prediction returns one of them, verbatim');

# ---- 7. SECURITY DEFINER functions pin search_path ----------------------------------
# Every function of the extension (pg_depend), and every function anywhere
# named peft_* or in schema peft: each SECURITY DEFINER one must set
# search_path; functions that set search_path set it to pg_catalog first.
my $functions = q{
	SELECT p.oid, p.proname, p.prosecdef, p.proconfig FROM pg_proc p
	WHERE p.oid IN (SELECT d.objid FROM pg_depend d
	                WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
	                  AND d.refclassid = 'pg_extension'::regclass
	                  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'peft'))
	   OR p.proname LIKE 'peft\_%' OR p.pronamespace = 'peft'::regnamespace
};
# (peft_predict has three forms: one text, an array, and one adapter per row)
is(su("SELECT count(*) FILTER (WHERE proname IN ('peft_train', 'peft_register_model', 'peft_predict', '_job_lost', '_worker_alive')) "
	  . "|| ',' || (count(*) >= 14) FROM ($functions) f"),
	'7,true', 'security definer: the query sees the extension functions (C, SQL, in schema peft and public)');
my $unpinned = "SELECT coalesce(string_agg(proname, ','), '') FROM ($functions) f WHERE prosecdef "
  . "AND NOT EXISTS (SELECT 1 FROM unnest(proconfig) c WHERE c LIKE 'search\\_path=%')";
is(su($unpinned), '', 'security definer: no SECURITY DEFINER function of peft leaves search_path unset');
is(su("BEGIN; CREATE FUNCTION peft.unpinned() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'; "
	  . "$unpinned; ROLLBACK"),
	'unpinned', 'security definer: (the check does catch such a function)');
my $secdef = su("SELECT count(*) FROM ($functions) f WHERE prosecdef");
is(su("SELECT count(*) FROM ($functions) f WHERE prosecdef "
	  . "AND EXISTS (SELECT 1 FROM unnest(proconfig) c WHERE c LIKE 'search\\_path=pg\\_catalog%')"),
	$secdef, "security definer: each of the $secdef SECURITY DEFINER functions pins search_path to pg_catalog first");
is(su("SELECT coalesce(string_agg(proname, ','), '') FROM ($functions) f "
	  . "WHERE EXISTS (SELECT 1 FROM unnest(proconfig) c WHERE c LIKE 'search\\_path=%' AND c NOT LIKE 'search\\_path=pg\\_catalog%')"),
	'', 'security definer: no peft function sets a search_path that does not start with pg_catalog');

# The C functions write the catalog as the extension owner (not SECURITY
# DEFINER, but the same rights): hostile operators first in search_path
# must not run as the owner through them (003 checks peft_activate).
su(q{
	CREATE SCHEMA hostile AUTHORIZATION alice;
	GRANT USAGE ON SCHEMA hostile TO PUBLIC;
});
safe_as('alice', q{
	CREATE FUNCTION hostile.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		IF current_user NOT IN ('alice', 'reader') THEN
			EXECUTE 'ALTER ROLE alice SUPERUSER';
			EXECUTE 'ALTER ROLE reader SUPERUSER';
		END IF;
		RETURN true;
	END $$;
	CREATE FUNCTION hostile.texteq(text, text) RETURNS boolean LANGUAGE sql
		AS $$ SELECT hostile.escalate() AND $1 OPERATOR(pg_catalog.=) $2 $$;
	CREATE FUNCTION hostile.int8eq(bigint, bigint) RETURNS boolean LANGUAGE sql
		AS $$ SELECT hostile.escalate() AND $1 OPERATOR(pg_catalog.=) $2 $$;
	CREATE FUNCTION hostile.int4eq(integer, integer) RETURNS boolean LANGUAGE sql
		AS $$ SELECT hostile.escalate() AND $1 OPERATOR(pg_catalog.=) $2 $$;
	CREATE OPERATOR hostile.= (LEFTARG = text, RIGHTARG = text, FUNCTION = hostile.texteq);
	CREATE OPERATOR hostile.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = hostile.int8eq);
	CREATE OPERATOR hostile.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = hostile.int4eq);
	GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA hostile TO PUBLIC;
});
my $hostile = 'SET search_path = hostile, pg_catalog, public; ';
($out, $err) = psql_as('alice', $hostile . "SELECT public.peft_train('hostile_job', 'tiny', 'public.small', 'body', 'sentiment', "
	  . "options => '$QUICK')");
like($out, qr/^\d+$/, 'hostile search_path: peft_train records its job');
my $hostile_job = $out;
($out, $err) = psql_as('alice', $hostile . "SELECT public.peft_cancel($hostile_job)");
is($err, '', 'hostile search_path: peft_cancel works');
ok($node->poll_query_until('postgres', "SELECT status IN ('canceled', 'succeeded') FROM peft.jobs WHERE id = $hostile_job"),
	'hostile search_path: the job ends');
($out, $err) = psql_as('alice', $hostile . "SELECT public.peft_drop_adapter('mixed')");
is($out, '1', 'hostile search_path: peft_drop_adapter works');
($out, $err) = psql_as('reader', $hostile . "SELECT name FROM public.peft_register_model('hostile_model', " . lit($tiny) . ")");
is($out, 'hostile_model', 'hostile search_path: peft_register_model works');
is(su("SELECT string_agg(rolname || ':' || rolsuper, ',' ORDER BY rolname) FROM pg_roles WHERE rolname IN ('alice', 'reader')"),
	'alice:false,reader:false', "hostile search_path: the caller's operators never ran as the extension owner");

$node->stop;
done_testing();
