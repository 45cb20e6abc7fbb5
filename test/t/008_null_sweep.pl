# Every SQL function of the extension, read from pg_proc, called with NULL in
# each argument position (the others valid), and with hostile values: empty
# strings, empty arrays, arrays holding NULLs, multidimensional arrays, zero,
# negative and extreme integers, NaN and infinities, odd JSON and a 10 MB
# text, bytea and JSON value.  Each call must return a result or an ERROR,
# and the server must never crash: no "terminated by signal" in its log, and
# a session opened before the sweep is still connected after it (a crash
# restart would have ended it; pg_postmaster_start_time() does not move on
# a crash restart, so it proves nothing).
#
# A function added to the extension is covered without editing this file:
# its arguments get values by name (a table below) or else by type.
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;

my $tiny = tiny_model_dir();
my $node = peft_node('sweep', conf => "restart_after_crash = on\npeft.max_jobs = 2\n");
$node->safe_psql('postgres', reviews_sql('small', 60) . q{
	CREATE ROLE alice LOGIN;
	GRANT SELECT ON small TO alice;
});
my $job = train_and_wait($node, 'a', 'small');
ok($job =~ /^\d+$/, 'an adapter to call the functions with was trained');

# The session that must survive the sweep.
my $watcher = $node->background_psql('postgres', on_error_stop => 0);
my $watcher_pid = $watcher->query_safe('SELECT pg_backend_pid()');

# The two calls that crashed the server in 0.1.0.
for my $call ('SELECT peft_drop_adapter(NULL)', 'SELECT peft_merge(NULL)')
{
	my ($rc, $out, $err) = $node->psql('postgres', $call);
	like($err, qr/ERROR:  adapter must not be NULL/, "$call: an ERROR, not a crash");
}

# A valid value for an argument, by argument name ("function.argument" first).
my $TEN_MB = 10 * 1024 * 1024;
my %valid_by_name = (
	'peft_drop_adapter.adapter' => q{'victim'},
	'peft_register_model.name' => q{'tiny'},
	'peft_verify_model.name' => q{'tiny'},
	'peft_combine.weights' => q{ARRAY[1.0]::float8[]},
	'peft_train.wait' => 'false',
	adapter => q{'a'},
	base_model => q{'tiny'},
	model => q{'tiny'},
	path => qq{'$tiny'},
	data => q{'small'},
	input => q{'the movie was good'},
	inputs => q{ARRAY['good movie', 'bad food']},
	label => q{'sentiment'},
	task => q{'classification'},
	method => q{'lora'},
	options => q{'{"epochs": 1, "batch_size": 8}'::jsonb},
	version => '1',
	job => $job,
	config => q{peft_export_config('a')},
	weights => q{peft_export('a')},
	labels => q{(SELECT labels FROM peft.adapters WHERE name = 'a' AND active)},
	activate => 'true',
	sources => q{ARRAY['a']},
	combination => q{'linear'},
	pid => 'pg_backend_pid()',
	started => 'now()',
	status => q{'running'},
	worker_pid => 'pg_backend_pid()',
	worker_started => 'now()',
	created_at => 'now()',
);
# A valid value by type, for argument names not in the table above.
my %valid_by_type = (
	text => q{'a'},
	integer => '1',
	bigint => '1',
	boolean => 'true',
	jsonb => q{'{}'::jsonb},
	bytea => q{'\x00'::bytea},
	'text[]' => q{ARRAY['a']},
	'double precision[]' => q{ARRAY[1.0]::float8[]},
	'real[]' => q{ARRAY[1.0, 2.0]::real[]},
	'timestamp with time zone' => 'now()',
);
# The hostile values of each type (NULL is added to every type).
my %hostile = (
	text => [ q{''}, q{' '}, qq{repeat('x', $TEN_MB)}, q{E'\u00e9\t\n'}, q{'a;b'} ],
	integer => [ '0', '-1', '2147483647', '-2147483648' ],
	bigint => [ '0', '-1', '9223372036854775807', '(-9223372036854775807 - 1)' ],
	boolean => [ 'false' ],
	jsonb => [ q{'[]'::jsonb}, q{'"s"'::jsonb}, q{'null'::jsonb}, q{'{"r": -1, "epochs": 1e308}'::jsonb},
		qq{jsonb_build_object('x', repeat('x', $TEN_MB))} ],
	bytea => [ q{''::bytea}, q{'\x00'::bytea}, qq{convert_to(repeat('x', $TEN_MB), 'UTF8')} ],
	'text[]' => [ q{'{}'::text[]}, q{'{NULL}'::text[]}, q{ARRAY['a', NULL]}, q{'{""}'::text[]},
		q{'{{a,b},{c,d}}'::text[]}, qq{ARRAY[repeat('x', $TEN_MB)]} ],
	'double precision[]' => [ q{'{}'::float8[]}, q{'{NULL}'::float8[]}, q{'{NaN}'::float8[]},
		q{'{Infinity}'::float8[]}, q{'{-1e308}'::float8[]}, q{'{{1},{2}}'::float8[]} ],
	'real[]' => [ q{'{}'::real[]}, q{'{NULL}'::real[]}, q{'{NaN}'::real[]}, q{'{Infinity}'::real[]},
		q{'{0}'::real[]}, q{'{{1},{2}}'::real[]}, q{array_fill(1::real, ARRAY[2500000])} ],
	'timestamp with time zone' => [ q{'infinity'::timestamptz}, q{'-infinity'::timestamptz} ],
);

# Prepared before each call of a function (its valid call would destroy what others need).
my %before = (
	peft_drop_adapter => q{SELECT peft_drop_adapter('victim') WHERE EXISTS
		(SELECT 1 FROM peft.adapters WHERE name = 'victim');
		SELECT peft_import('victim', 'tiny', peft_export_config('a'), peft_export('a'),
		                   labels => (SELECT labels FROM peft.adapters WHERE name = 'a' AND active));},
);

my $functions = decode_json($node->safe_psql('postgres', q{
	SELECT json_agg(json_build_object(
	         'name', p.proname,
	         'schema', n.nspname,
	         'argnames', coalesce(p.proargnames[1:p.pronargs], array_fill(''::text, ARRAY[p.pronargs])),
	         'argtypes', ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t),
	         'retset', p.proretset) ORDER BY p.oid)
	FROM pg_proc p
	JOIN pg_namespace n ON n.oid = p.pronamespace
	JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
	JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'peft'}));
my @public = grep { $_->{name} =~ /^peft_/ } @$functions;
cmp_ok(scalar(@public), '>=', 17, scalar(@$functions) . ' functions of the extension read from pg_proc, '
	  . scalar(@public) . ' of them peft_*');

# The SQL of a call of $f with the given argument expressions.
sub call_sql
{
	my ($f, @args) = @_;
	return "SELECT * FROM $f->{schema}.$f->{name}(" . join(', ', @args) . ')';
}

# Run one call as $role; return undef if it gave a result or an ERROR, else what happened.
sub run_call
{
	my ($sql, $role) = @_;
	my ($rc, $out, $err) = $node->psql('postgres',
		"SET statement_timeout = '120s';\n" . ($role ? "SET ROLE $role;\n" : '') . $sql,
		on_error_stop => 1);
	return undef if $rc == 0 || ($rc == 3 && $err =~ /^(psql:[^\n]*)?ERROR:  /m);
	return "exit $rc: $err";
}

my ($calls, $null_calls) = (0, 0);
for my $f (@$functions)
{
	my @types = @{ $f->{argtypes} };
	my @names = @{ $f->{argnames} };
	my @valid;
	my @failures;
	my $n = 0;
	for my $i (0 .. $#types)
	{
		my $v = $valid_by_name{"$f->{name}.$names[$i]"} // $valid_by_name{ $names[$i] }
		  // $valid_by_type{ $types[$i] };
		BAIL_OUT("no valid value for $f->{name}($names[$i] $types[$i]): add its type to the test")
		  unless defined $v;
		push @valid, $v;
	}
	my @cases = ([@valid]);
	for my $i (0 .. $#types)
	{
		BAIL_OUT("no hostile values for type $types[$i]: add it to the test") unless $hostile{ $types[$i] };
		for my $bad ("NULL::$types[$i]", @{ $hostile{ $types[$i] } })
		{
			my @args = @valid;
			$args[$i] = $bad;
			push @cases, \@args;
		}
	}
	for my $args (@cases)
	{
		my $sql = ($before{ $f->{name} } // '') . call_sql($f, @$args) . ';';
		my $null = grep { /^NULL::/ } @$args;
		for my $role ($null ? (undef, 'alice') : (undef))
		{
			my $bad = run_call($sql, $role);
			$n++;
			$null_calls++ if $null;
			push @failures, "$sql" . ($role ? " (as $role)" : '') . ": $bad" if defined $bad;
		}
	}
	$calls += $n;
	is(join("\n", @failures), '', "$f->{schema}.$f->{name}(" . join(', ', @types) . "): $n calls, "
		  . 'each a result or an ERROR');
}
note("$calls calls of " . scalar(@$functions) . " functions ($null_calls with a NULL argument)");
diag("NULL sweep: $calls calls of " . scalar(@$functions) . " functions, $null_calls with a NULL");

# No crash restart happened: the watcher's session is the same backend, and
# the log has no backend terminated by a signal.
is($watcher->query_safe('SELECT pg_backend_pid()'), $watcher_pid,
	'the session opened before the sweep is still connected');
$watcher->quit;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no server process was terminated by a signal');
unlike($log, qr/all server processes terminated; reinitializing/, 'no crash restart');

$node->stop;
done_testing();
