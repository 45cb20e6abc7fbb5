# The serving worker (peft.serve = on): peft_predict computed by one
# background worker per (database, model, device) for every connection.
#
#  1. without shared_preload_libraries: SET peft.serve = on is an ERROR
#  2. an adapter the role cannot see: ERROR naming it, nothing started
#  3. many connections at once over several adapters: each gets the
#     answers peft.serve = off gives, through one worker
#  4. a serving connection maps no engine library, no BLAS, no weights
#     (the mixed form, an adapter per row, too)
#  5. serve toggled at run time (SET, ALTER SYSTEM + reload)
#  6. a corrupt adapter: its caller gets the ERROR, the worker serves on
#  7. cancel and statement_timeout of a waiting call; the worker serves on
#  8. pg_terminate_backend of the worker with callers waiting: ERROR, then
#     the next call starts a new worker
#  9. DROP EXTENSION ends the worker; CREATE EXTENSION serves again
# 10. a restart starts no worker until one is used
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use PeftTest;

# serve = on and off compute the same network; only the batching differs
use constant SCORE_TOLERANCE => 1e-6;

my $tiny = tiny_model_dir();

# ---- 1. not preloaded ------------------------------------------------------------
my $plain = PostgreSQL::Test::Cluster->new('serve_plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', "CREATE EXTENSION peft; SELECT peft_register_model('tiny', '$tiny')");
my ($rc, $out, $err) = $plain->psql('postgres', "\\set VERBOSITY verbose\nSELECT peft_version();\nSET peft.serve = on");
like($err, qr/ERROR:  55000: .*peft\.serve needs peft in shared_preload_libraries/,
	'not preloaded: SET peft.serve = on is an ERROR with errcode 55000');
like($err, qr/HINT:  Add 'peft' to shared_preload_libraries/, 'not preloaded: the hint says what to do');
# set before peft is loaded in the session (a placeholder): the call says why it cannot serve
($rc, $out, $err) = $plain->psql('postgres', "\\set VERBOSITY verbose\nSET peft.serve = on;\nSELECT * FROM peft_predict('x', 'y')");
like($err, qr/ERROR:  55000: .*peft\.serve is on, but peft is not in shared_preload_libraries/,
	'not preloaded: a call with peft.serve set before loading is an ERROR with errcode 55000');
$plain->stop;

# ---- the node --------------------------------------------------------------------
my $node = peft_node('serve', conf => "shared_preload_libraries = 'peft'\n");

sub su
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}


my $MAPS = maps_sql();

su(reviews_sql('reviews', 240));
train_and_wait($node, 'a1', 'reviews');
train_and_wait($node, 'a2', 'reviews', options => '{"epochs": 1, "batch_size": 8, "learning_rate": 0.02}');
train_and_wait($node, 'a3', 'reviews', method => 'dora');
my @adapters = qw(a1 a2 a3);
my @texts = ('the movie was good', 'terrible food today', 'we went to the city with our team',
	'awful', 'great hotel room', 'the chair was very bad', 'river', 'excellent service really');

# ---- 2. an adapter the role cannot see -------------------------------------------
su("CREATE ROLE bob LOGIN; ALTER ROLE bob SET peft.serve = on");
($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT * FROM peft_predict('a1', 'good')",
	extra_params => [ '-U', 'bob' ]);
like($err, qr/ERROR:  42704: adapter "a1" does not exist or has no active version/,
	'hidden adapter: ERROR naming it (row-level security decides, in the caller)');
is(serving_pids($node), '', 'hidden adapter: nothing was queued (no serving worker started)');

# ---- 3. many connections at once -------------------------------------------------
# Reference answers, computed in the calling connection.
my %want;
for my $a (@adapters)
{
	for my $row (split /\n/, su("SELECT ord, label, score FROM peft_predict('$a', ARRAY['"
		  . join("','", @texts) . "'])"))
	{
		my ($ord, $label, $score) = split /\|/, $row;
		$want{"$a|" . $texts[ $ord - 1 ]} = [ $label, $score ];
	}
}
is(serving_pids($node), '', 'serve = off computes in the connection (no serving worker)');

my $SESSIONS = 8;
my $CALLS = 24;
my (@harness, @outs, @errs);
for my $s (1 .. $SESSIONS)
{
	my $sql = "SET peft.serve = on;\n";
	for my $c (1 .. $CALLS)
	{
		my $a = $adapters[ ($s * 7 + $c * 5) % @adapters ];
		my $t = $texts[ ($s * 3 + $c) % @texts ];
		$sql .= $c % 6 == 0
		  ? "SELECT '$a', t.x, p.label, p.score FROM unnest(ARRAY['" . join("','", @texts)
		  . "']) WITH ORDINALITY t(x, i) JOIN peft_predict('$a', ARRAY['" . join("','", @texts)
		  . "']) p ON p.ord = t.i;\n"
		  : "SELECT '$a', '$t', label, score FROM peft_predict('$a', '$t');\n";
	}
	my ($o, $e) = ('', '');
	push @outs, \$o;
	push @errs, \$e;
	push @harness, IPC::Run::start([ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
		'<', \$sql, '>', \$o, '2>', \$e);
}
$_->finish for @harness;
my ($rows, $wrong, $errors) = (0, 0, 0);
for my $i (0 .. $#outs)
{
	$errors++ if ${ $errs[$i] } ne '';
	for my $line (split /\n/, ${ $outs[$i] })
	{
		my ($a, $t, $label, $score) = split /\|/, $line;
		my $w = $want{"$a|$t"};
		$rows++;
		$wrong++ unless $w && $label eq $w->[0] && abs($score - $w->[1]) <= SCORE_TOLERANCE;
	}
}
is($errors, 0, "concurrent: no session had an error") or diag(join "\n", map { $$_ } @errs);
is($rows, $SESSIONS * ($CALLS - int($CALLS / 6)) + $SESSIONS * int($CALLS / 6) * @texts,
	'concurrent: every call answered every row');
is($wrong, 0, 'concurrent: every row equals the serve = off answer (same label, score within SCORE_TOLERANCE)');
my $worker = serving_pids($node);
like($worker, qr/^\d+$/, 'concurrent: one serving worker served all sessions');

# ---- 4. a serving connection maps no engine ----------------------------------------
is($node->safe_psql('postgres', "SET peft.serve = on; SELECT count(*) FROM peft_predict('a1', 'good'); $MAPS"),
	"1\n0", 'maps: a connection that predicts with serve = on maps no peft_engine.so, BLAS or weights');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft_predict('a1', 'good'); $MAPS") > 0 ? 1 : 0,
	1, 'maps: the same check sees them in a connection that computes (serve = off)');
# the mixed form (an adapter per row) through the worker: serve = off's answers, no engine mapped
my $mixed_sql = "SELECT adapter, label, score "
  . "FROM peft_predict(ARRAY['a1', 'a2', 'a3', 'a1'], ARRAY['$texts[0]', '$texts[1]', '$texts[2]', '$texts[3]']) "
  . "ORDER BY ord";
my @mixed_off = split /\n/, su($mixed_sql);
my @mixed_on = split /\n/, $node->safe_psql('postgres', "SET peft.serve = on; $mixed_sql; $MAPS");
my $maps_on = pop @mixed_on;
is(scalar(@mixed_off) . ',' . scalar(@mixed_on), '4,4', 'mixed form: four rows with serve off and on');
my $mixed_wrong = 0;
for my $i (0 .. $#mixed_off)
{
	my ($a_off, $l_off, $s_off) = split /\|/, $mixed_off[$i];
	my ($a_on, $l_on, $s_on) = split /\|/, ($mixed_on[$i] // '||');
	$mixed_wrong++ unless $a_on eq $a_off && $l_on eq $l_off && abs($s_on - $s_off) <= SCORE_TOLERANCE
	  && $a_off eq (qw(a1 a2 a3 a1))[$i];
}
is($mixed_wrong, 0, 'mixed form: serve = on answers as serve = off, each row with its adapter');
is($maps_on, 0, 'mixed form: the serving connection maps no engine');
is(su("SELECT count(*) FROM regexp_split_to_table(pg_read_file('/proc/$worker/maps'), E'\\n') l "
	  . "WHERE l ~ 'peft_engine'") > 0 ? 1 : 0, 1, 'maps: the serving worker has the engine');

# ---- 5. toggled at run time ------------------------------------------------------------
su("ALTER SYSTEM SET peft.serve = on; SELECT pg_reload_conf()");
ok($node->poll_query_until('postgres', "SELECT current_setting('peft.serve') = 'on'"), 'toggle: reload turns it on');
is(su("SELECT count(*) FROM peft_predict('a2', 'good'); $MAPS"), "1\n0",
	'toggle: after ALTER SYSTEM + reload a new connection predicts through the worker');
is(su("SET peft.serve = off; SELECT count(*) FROM peft_predict('a2', 'good'); $MAPS") > 0 ? 1 : 0, 1,
	'toggle: SET peft.serve = off in that session computes locally again');
($rc, $out, $err) = $node->psql('postgres', "SET peft.serve = off", extra_params => [ '-U', 'bob' ]);
like($err, qr/permission denied to set parameter "peft.serve"/, 'toggle: an ordinary role cannot change it');
su("ALTER SYSTEM RESET peft.serve; SELECT pg_reload_conf()");
ok($node->poll_query_until('postgres', "SELECT current_setting('peft.serve') = 'off'"), 'toggle: reload turns it off');

# ---- 6. one adapter fails in the worker, the others are served -------------------------
su(q{INSERT INTO peft.adapters (name, version, base_model, method, task, config, labels, weights, active)
     SELECT 'broken', 1, base_model, method, task, config, labels, '\x00'::bytea, true
     FROM peft.adapters WHERE name = 'a1' AND active});
($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSET peft.serve = on; SELECT * FROM peft_predict('broken', 'good')");
like($err, qr/ERROR:  XX001: adapter "broken" version 1 cannot be loaded/,
	'corrupt adapter: the caller gets the worker\'s ERROR with its errcode');
my ($label, $score) = split /\|/, su("SET peft.serve = on; SELECT label, score FROM peft_predict('a1', '$texts[0]')");
ok($label eq $want{"a1|$texts[0]"}[0] && abs($score - $want{"a1|$texts[0]"}[1]) <= SCORE_TOLERANCE,
	'corrupt adapter: the next call of another adapter is answered');
is(serving_pids($node), $worker, 'corrupt adapter: by the same worker');

# An adapter that fails in the worker (an embedding row over a classifier's weights: it
# does not load) in one batch with another: only its caller gets the ERROR.
# peft.serve_max_wait holds both in one batch.
su(q{INSERT INTO peft.adapters (name, version, base_model, method, task, config, labels, weights, active)
     SELECT 'headless', 1, base_model, method, 'embedding', config, NULL, weights, true
     FROM peft.adapters WHERE name = 'a2' AND active});
su("ALTER SYSTEM SET peft.serve_max_wait = '2s'; SELECT pg_reload_conf()");
sleep 1;
my %mixed;
for my $a (qw(a2 headless))
{
	my ($o, $e) = ('', '');
	$mixed{$a} = [ IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c', 'SET peft.serve = on',
		'-c', "SELECT label, score FROM peft_predict('$a', '$texts[2]')" ], '>', \$o, '2>', \$e), \$o, \$e ];
}
$_->[0]->finish for values %mixed;
($label, $score) = split /\|/, ${ $mixed{a2}[1] };
ok($label eq $want{"a2|$texts[2]"}[0] && abs($score - $want{"a2|$texts[2]"}[1]) <= SCORE_TOLERANCE,
	'mixed batch: the other adapter\'s caller is answered') or diag(${ $mixed{a2}[2] });
like(${ $mixed{headless}[2] }, qr/adapter "headless" version 1 cannot be loaded/,
	'mixed batch: the adapter that fails is its caller\'s ERROR');
su("ALTER SYSTEM RESET peft.serve_max_wait; SELECT pg_reload_conf()");
sleep 1;

# ---- 7. cancel and statement_timeout of a waiting call ---------------------------------
# The worker holds a lone request for 10 s (peft.serve_max_wait), so the call is waiting.
my $log = -s $node->logfile;
su("ALTER SYSTEM SET peft.serve_max_wait = '10s'; SELECT pg_reload_conf()");
sleep 1;
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe('SET peft.serve = on');
$bg->query_until(qr/started/, "\\echo started\nSELECT * FROM peft_predict('a1', 'cancel me');\n");
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE '%cancel me%'"),
	'cancel: the call waits for the worker');
su("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%cancel me%' AND pid <> pg_backend_pid()");
$bg->query('SELECT 1');
like($bg->{stderr}, qr/canceling statement due to user request/, 'cancel: the waiting call is canceled');
$bg->{stderr} = '';
my $t0 = time;
$bg->query("SET statement_timeout = '500ms'; SELECT * FROM peft_predict('a1', 'time me out')");
like($bg->{stderr}, qr/canceling statement due to statement timeout/, 'statement_timeout: the waiting call ends');
ok(time - $t0 < 3, 'statement_timeout: without waiting for the batch');
$bg->quit;
# back to 2 ms: the worker computes the withdrawn requests now and finds their callers gone
su("ALTER SYSTEM RESET peft.serve_max_wait; SELECT pg_reload_conf()");
sleep 2;
is(serving_pids($node), $worker, 'cancel: the worker skipped the withdrawn answers and still runs');
ok(!$node->log_contains(qr/peft serving worker.*failed|serving.*(ERROR|FATAL)/, $log), 'cancel: the worker logged no error');
($label) = split /\|/, su("SET peft.serve = on; SELECT label, score FROM peft_predict('a1', '$texts[0]')");
is($label, $want{"a1|$texts[0]"}[0], 'cancel: the next call is answered');

# ---- 8. the worker terminated while callers wait ---------------------------------------
su("ALTER SYSTEM SET peft.serve_max_wait = '10s'; SELECT pg_reload_conf()");
sleep 1;
my @waiting;
for my $i (1 .. 3)
{
	my ($o, $e) = ('', '');
	push @waiting, [ IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c', 'SET peft.serve = on',
		'-c', '\\set VERBOSITY verbose', '-c', "SELECT label FROM peft_predict('a$i', 'doomed $i')" ],
		'>', \$o, '2>', \$e), \$o, \$e ];
}
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE '%doomed%'"),
	'terminate: three calls wait for the worker');
su("SELECT pg_terminate_backend($worker)");
my $gone = 0;
for my $w (@waiting)
{
	$w->[0]->finish;
	$gone++ if ${ $w->[2] } =~ /ERROR:  08006: the serving worker of model "tiny" exited before answering/;
}
is($gone, 3, 'terminate: each waiting caller gets an ERROR (08006), none hangs');
su("ALTER SYSTEM RESET peft.serve_max_wait; SELECT pg_reload_conf()");
sleep 1;
($label) = split /\|/, su("SET peft.serve = on; SELECT label, score FROM peft_predict('a2', '$texts[1]')");
is($label, $want{"a2|$texts[1]"}[0], 'terminate: the next call is answered');
my $worker2 = serving_pids($node);
ok($worker2 =~ /^\d+$/ && $worker2 ne $worker, 'terminate: by a new worker');

# ---- 9. DROP EXTENSION and CREATE EXTENSION ----------------------------------------------
su('DROP EXTENSION peft CASCADE');
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'peft serving'"),
	'drop: the worker exits when the extension is dropped');
ok($node->log_contains(qr/peft serving worker: the extension was dropped; exiting/), 'drop: and says why');
su("CREATE EXTENSION peft; SELECT peft_register_model('tiny', '$tiny')");
train_and_wait($node, 'a1', 'reviews');
is(su("SET peft.serve = on; SELECT count(label) FROM peft_predict('a1', ARRAY['good', 'bad'])"), '2',
	'drop: after CREATE EXTENSION the serving path works again');

# ---- 10. restart -------------------------------------------------------------------------
$node->restart;
is(serving_pids($node), '', 'restart: no serving worker runs until one is used');
is(su("SET peft.serve = on; SELECT count(label) FROM peft_predict('a1', 'good')"), '1',
	'restart: the first call starts one and is answered');
like(serving_pids($node), qr/^\d+$/, 'restart: one serving worker runs');

$node->stop;
done_testing();
