# Faults while jobs run: the server must not crash (or, where a crash is
# forced, must recover), no row may be lost or half-written, and every job
# must end in a state that says what happened.
#
# Covered elsewhere, not repeated here:
#  - pg_terminate_backend of a worker, a first immediate shutdown (the
#    running job shows failed, no adapter row, peft_wait returns its error),
#    cancel, rollback of the caller: 002_jobs.pl, sections 2-4, 6-8;
#  - two wait => true calls for one name while peft.max_jobs = 1 (the jobs
#    run one after the other): 002_jobs.pl, section 9;
#  - a job over peft.max_train_memory fails with an error naming the setting
#    and leaves no adapter row; peft_train with no free worker slot fails at
#    call time and records nothing: 004_limits.pl.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;
use Time::HiRes qw(time usleep);

my $tiny = $ENV{PEFT_TINY_MODEL_DIR};
plan skip_all => 'PEFT_TINY_MODEL_DIR is not set' unless $tiny && -d $tiny;

my $node = PostgreSQL::Test::Cluster->new('faults');
$node->init;
# PostgreSQL::Test::Cluster turns restart_after_crash off; the crash tests
# need the server to restart by itself, as it does by default.
$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
restart_after_crash = on
});
$node->start;

sub setup_sql
{
	return qq{
	CREATE EXTENSION peft;
	SELECT peft_register_model('tiny', '$tiny');
	@{[ reviews_sql('reviews', 20000) ]}
	@{[ reviews_sql('small', 600) ]}
	};
}
$node->safe_psql('postgres', setup_sql());
my $LONG = '{"epochs": 500, "batch_size": 8}';
my $MEDIUM = '{"epochs": 3, "batch_size": 8}';
my $QUICK = '{"epochs": 1, "batch_size": 8}';

sub train_sql
{
	my ($adapter, $data, $options, $wait) = @_;
	$data =~ s/'/''/g;
	return "SELECT peft_train('$adapter', 'tiny', '$data', 'body', 'sentiment', "
	  . "options => '$options', wait => " . ($wait ? 'true' : 'false') . ")";
}

sub su
{
	my ($sql, $db) = @_;
	return $node->safe_psql($db // 'postgres', $sql);
}

sub wait_running
{
	my ($job, $db) = @_;
	return $node->poll_query_until($db // 'postgres',
		"SELECT status = 'running' AND step > 0 FROM peft.jobs WHERE id = $job");
}

sub no_workers_left
{
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'peft training'");
}

# Size of the server log now: log_contains($re, $offset) looks after it.
sub log_position
{
	return -s $node->logfile;
}

# How the postmaster saw worker $pid end, from the log after $offset: "exited
# with exit code N" or "was terminated by signal N".  (The worker leaves
# pg_stat_activity before the postmaster logs its end, so wait for the line.)
sub worker_end
{
	my ($pid, $offset) = @_;
	my $re = qr/background worker "peft training" \(PID $pid\) (exited with exit code \d+|was terminated by signal \d+)/;
	$node->wait_for_log($re, $offset);
	return (PostgreSQL::Test::Utils::slurp_file($node->logfile, $offset) =~ $re)[0];
}

# ---- 1. kill -9 of a running training worker ----------------------------------
my $job = su(train_sql('killed', 'reviews', $LONG, 0));
ok(wait_running($job), 'kill -9: the job is training');
my $pid = su("SELECT worker_pid FROM peft.jobs WHERE id = $job");
is(su("SELECT backend_type FROM pg_stat_activity WHERE pid = $pid"), 'peft training',
	'kill -9: peft.jobs.worker_pid is the training worker in pg_stat_activity');
my $log = log_position();
kill 'KILL', $pid;
$node->wait_for_log(qr/all server processes terminated; reinitializing.*database system is ready to accept connections/s, $log);
ok($node->log_contains(qr/background worker "peft training" \(PID $pid\) was terminated by signal 9/, $log),
	'kill -9: the postmaster saw the crash and reinitialised (a crash restart, not a shutdown)');
ok($node->poll_query_until('postgres', 'SELECT 1', '1'), 'kill -9: a new connection works after the crash restart');
my ($status, $error) = split /\|/, su("SELECT status, error FROM peft.jobs WHERE id = $job");
is($status, 'failed', 'kill -9: the job shows failed');
like($error, qr/the training worker ended without finishing/, 'kill -9: with an error text');
is(su("SELECT count(*) FROM peft.adapters WHERE job = $job OR name = 'killed'"), '0',
	'kill -9: no adapter row, whole or partial, for the job');
my ($rc, $out, $err) = $node->psql('postgres', "SET statement_timeout = '30s'; SELECT status FROM peft_wait($job)");
like($err, qr/training job $job failed: the training worker ended without finishing/,
	'kill -9: peft_wait returns the failure at once');
# The job slot (a session lock of the dead worker) is free again, and the
# name has no version: a new job takes version 1.
my $again = su(train_sql('killed', 'small', $QUICK, 1));
is(su("SELECT j.status, a.version FROM peft.jobs j JOIN peft.adapters a ON a.job = j.id WHERE j.id = $again"),
	'succeeded|1', 'kill -9: after recovery a new job on the same name succeeds as version 1');

# ---- 1b. crash restart while a committed job's worker has not recorded itself --
# The worker of a wait => false job runs once its caller commits; until it
# has written worker_pid, the job is recognised as lost only by its age.  A
# crash restart keeps pg_postmaster_start_time(), so that age test needs the
# time of the restart (peft._server_started()).  The worker is held right
# there: another session locks peft.job_rows before the caller commits.
my $caller = $node->background_psql('postgres', on_error_stop => 0);
my $locker = $node->background_psql('postgres', on_error_stop => 0);
$caller->query_safe('BEGIN');
my $early = $caller->query_safe(train_sql('early', 'small', $QUICK, 0));
$locker->query_until(qr/locking/, "\\echo locking\nBEGIN; LOCK peft.job_rows IN ACCESS EXCLUSIVE MODE;\n");
ok($node->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM pg_locks WHERE relation = 'peft.job_rows'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted"),
	'early crash: the lock waits behind the caller');
$caller->query_safe('COMMIT');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
	. "WHERE a.backend_type = 'peft training' AND l.relation = 'peft.job_rows'::regclass AND NOT l.granted"),
	'early crash: the committed job\'s worker waits before recording itself');
my $start_time = su('SELECT pg_postmaster_start_time()');
$pid = su("SELECT pid FROM pg_stat_activity WHERE backend_type = 'peft training'");
$log = log_position();
kill 'KILL', $pid;
$node->wait_for_log(qr/all server processes terminated; reinitializing.*database system is ready to accept connections/s, $log);
ok($node->poll_query_until('postgres', 'SELECT 1', '1'), 'early crash: the server restarts');
$caller->quit;
$locker->quit;
is(su('SELECT pg_postmaster_start_time()'), $start_time,
	'early crash: pg_postmaster_start_time() does not move on a crash restart');
is(su("SELECT worker_pid IS NULL, status FROM peft.jobs WHERE id = $early"), 't|failed',
	'early crash: the job no worker ever took shows failed, not queued forever');
($rc, $out, $err) = $node->psql('postgres', "SET statement_timeout = '30s'; SELECT status FROM peft_wait($early)");
like($err, qr/training job $early failed/, 'early crash: peft_wait on it returns at once');

# ---- 2. immediate shutdown mid-training, one job running and one queued -------
# (002_jobs.pl checks the running job; here the queue, a caller's
# uncommitted job, frozen progress and the job slot after the restart.)
my $running = su(train_sql('imm_running', 'reviews', $LONG, 0));
ok(wait_running($running), 'immediate: first job training');
my $queued = su(train_sql('imm_queued', 'reviews', $LONG, 0));
ok($node->poll_query_until('postgres',
	"SELECT status = 'queued' AND worker_pid IS NOT NULL FROM peft.jobs WHERE id = $queued"),
	'immediate: second job queued with its worker waiting for the slot');
my $open = $node->background_psql('postgres', on_error_stop => 0);
$open->query_safe('BEGIN');
$open->query_safe(train_sql('imm_uncommitted', 'small', $QUICK, 0));
my @pids = split /\n/, su("SELECT worker_pid FROM peft.jobs WHERE id IN ($running, $queued)");
$node->stop('immediate');
$node->start;
$open->quit;
is(su("SELECT count(*) FROM peft.jobs WHERE status IN ('queued', 'running')"), '0',
	'immediate: after the restart no job is queued or running');
is(su("SELECT string_agg(status || ':' || (error LIKE '%ended without finishing%'), ',' ORDER BY id) "
	  . "FROM peft.jobs WHERE id IN ($running, $queued)"),
	'failed:true,failed:true', 'immediate: the running and the queued job both show failed, with the reason');
is(su("SELECT count(*) FROM peft.job_rows WHERE adapter = 'imm_uncommitted'"), '0',
	'immediate: the job of a transaction that never committed left no row');
my $before = su("SELECT step, progress, cardinality(loss_history), step IS NULL FROM peft.jobs WHERE id IN ($running, $queued) ORDER BY id");
sleep 2;
is(su("SELECT step, progress, cardinality(loss_history), step IS NULL FROM peft.jobs WHERE id IN ($running, $queued) ORDER BY id"),
	$before, 'immediate: progress does not move after the restart (no job looks alive)');
is(su("SELECT progress < 1 FROM peft.jobs WHERE id = $running") . su("SELECT step IS NULL FROM peft.jobs WHERE id = $queued"),
	'tt', 'immediate: the interrupted job stays below 100%, the queued one never stepped');
is(su("SELECT count(*) FROM pg_stat_activity WHERE pid IN (" . join(',', @pids) . ") OR backend_type = 'peft training'"),
	'0', 'immediate: none of their workers is alive');
is(su("SELECT count(*) FROM peft.adapters WHERE name LIKE 'imm\\_%'"), '0', 'immediate: no adapter row');
($rc, $out, $err) = $node->psql('postgres', "SET statement_timeout = '30s'; SELECT status FROM peft_wait($queued)");
like($err, qr/training job $queued failed: the training worker ended without finishing/,
	'immediate: peft_wait on the queued job returns its failure at once');
$job = su(train_sql('imm_after', 'small', $QUICK, 1));
is(su("SELECT status FROM peft.jobs WHERE id = $job"), 'succeeded',
	'immediate: the job slot is free: a new job runs and succeeds');

# ---- 3. over the memory limit: 004_limits.pl ------------------------------------

# ---- 4a. DROP TABLE of the data while the worker reads it --------------------
# The worker reads every row in one transaction (one snapshot) before
# training, holding the reader's lock: DROP TABLE waits until the rows are
# read, and the job trains on all of them and succeeds.  The data query is
# slowed down (10 ms a row) so that the read lasts a few seconds.
su(qq{
	@{[ reviews_sql('slow_src', 400) ]}
	CREATE FUNCTION slowly(t text) RETURNS text LANGUAGE sql VOLATILE
		AS \$\$ SELECT pg_sleep(0.01); SELECT t \$\$;
});
$job = su(train_sql('dropped_while_read', 'SELECT slowly(body) AS body, sentiment FROM slow_src',
	'{"epochs": 30, "batch_size": 8}', 0));
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_locks l JOIN peft.jobs j ON l.pid = j.worker_pid "
	. "WHERE j.id = $job AND l.relation = 'slow_src'::regclass AND l.granted"),
	'drop table while read: the worker is reading the table');
my $dropper = $node->background_psql('postgres', on_error_stop => 0);
$dropper->query_until(qr/dropping/, "\\echo dropping\nDROP TABLE slow_src;\nSELECT 'dropped at ' || clock_timestamp();\n");
ok($node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE query LIKE 'DROP TABLE slow_src%'"),
	'drop table while read: DROP TABLE waits for the read');
is(su("SELECT status, total_steps IS NULL FROM peft.jobs WHERE id = $job"), 'running|t',
	'drop table while read: meanwhile the job is still reading (no training step planned)');
ok($node->poll_query_until('postgres', "SELECT status IN ('succeeded', 'failed') FROM peft.jobs WHERE id = $job"),
	'drop table while read: the job ends');
($out) = $dropper->query('SELECT 1');
$dropper->quit;
like($out, qr/^dropped at (.*)\n1$/, 'drop table while read: the DROP TABLE completed');
my ($dropped_at) = $out =~ /^dropped at (.*)$/m;
is(su("SELECT to_regclass('slow_src') IS NULL"), 't', 'drop table while read: the table is gone');
is(su("SELECT status, finished_at > '$dropped_at' FROM peft.jobs WHERE id = $job"), 'succeeded|t',
	'drop table while read: the job kept training after the DROP and succeeded');
is(su("SELECT (metrics->>'train_rows')::int + (metrics->>'valid_rows')::int FROM peft.adapters WHERE job = $job"),
	'400', 'drop table while read: it trained on every row it had read');

# ---- 4b. DROP TABLE committed while the worker waits to read --------------------
# A transaction that locked the table drops it: the worker, which waited for
# that lock at its read, fails with the error the caller would get, cleanly.
su(reviews_sql('doomed', 300));
$caller = $node->background_psql('postgres', on_error_stop => 0);
$locker = $node->background_psql('postgres', on_error_stop => 0);
$caller->query_safe('BEGIN');
$job = $caller->query_safe(train_sql('dropped_before_read', 'doomed', $QUICK, 0));
$locker->query_until(qr/locking/, "\\echo locking\nBEGIN; LOCK TABLE doomed IN ACCESS EXCLUSIVE MODE;\n");
ok($node->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM pg_locks WHERE relation = 'doomed'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted"),
	'drop table before read: the lock waits behind the caller');
$caller->query_safe('COMMIT');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_locks l JOIN peft.jobs j ON l.pid = j.worker_pid "
	. "WHERE j.id = $job AND j.status = 'running' AND l.relation = 'doomed'::regclass AND NOT l.granted"),
	'drop table before read: the running job waits for the lock at its read');
$locker->query_safe('DROP TABLE doomed');
$locker->query_safe('COMMIT');
ok($node->poll_query_until('postgres', "SELECT status = 'failed' FROM peft.jobs WHERE id = $job"),
	'drop table before read: the job fails');
like(su("SELECT error FROM peft.jobs WHERE id = $job"), qr/relation "doomed" does not exist/,
	'drop table before read: its error says the table does not exist');
is(su("SELECT count(*) FROM peft.adapters WHERE job = $job"), '0', 'drop table before read: no adapter row');
$caller->quit;
$locker->quit;

# ---- 5a. DROP EXTENSION while a wait => false job trains --------------------------
# The job's caller has committed and holds nothing: DROP EXTENSION does not
# wait.  The worker finds its row gone at its next progress report and stops
# (an ERROR, exit code 1: no crash); nothing of it is left.
my $observer = $node->background_psql('postgres', on_error_stop => 0);
my $observer_pid = $observer->query_safe('SELECT pg_backend_pid()');
$job = su(train_sql('dropped_ext', 'reviews', $LONG, 0));
ok(wait_running($job), 'drop extension: job training');
$pid = su("SELECT worker_pid FROM peft.jobs WHERE id = $job");
$log = log_position();
my $t0 = time;
su('DROP EXTENSION peft');
my $took = time - $t0;
cmp_ok($took, '<', 10, sprintf('drop extension: DROP EXTENSION does not wait for a wait => false job (%.1f s)', $took));
ok(no_workers_left(), 'drop extension: the worker stops');
is(worker_end($pid, $log), 'exited with exit code 1', 'drop extension: the worker ended with an error, not a crash');
ok(!$node->log_contains(qr/terminated by signal|reinitializing/, $log), 'drop extension: no crash restart');
is($observer->query_safe('SELECT pg_backend_pid()'), $observer_pid, 'drop extension: other sessions live on');
$observer->quit;
su('CREATE EXTENSION peft; SELECT peft_register_model(\'tiny\', \'' . $tiny . '\')');
is(su('SELECT (SELECT count(*) FROM peft.jobs) + (SELECT count(*) FROM peft.adapters)'), '0',
	'drop extension: the new catalog has no trace of the job');

# ---- 5b. DROP EXTENSION while a wait => true job trains ---------------------------
# The waiting caller's transaction holds the locks of its call-time checks
# on peft's tables, so DROP EXTENSION waits; the job trains on.  To save its
# adapter the worker needs peft.models, where it queues behind the DROP: a
# cycle through the caller's wait, which the deadlock detector cannot see
# (it hung all three for good).  The caller's wait ends with SQLSTATE 40P01
# (deadlock_detected), which cancels the job, and the DROP completes.
my $waiter = $node->background_psql('postgres', on_error_stop => 0);
$waiter->query_safe('\set VERBOSITY verbose');
$waiter->query_safe("SET statement_timeout = '150s'");
$waiter->query_until(qr/training/, "\\echo training\n" . train_sql('drop_waits', 'reviews', $MEDIUM, 1) . ";\n");
ok($node->poll_query_until('postgres', "SELECT status = 'running' AND step > 0 FROM peft.jobs WHERE adapter = 'drop_waits'"),
	'drop extension, wait => true: job training');
$pid = su("SELECT worker_pid FROM peft.jobs WHERE adapter = 'drop_waits'");
$log = log_position();
$dropper = $node->background_psql('postgres', on_error_stop => 0);
$dropper->query_until(qr/dropping/, "\\echo dropping\nDROP EXTENSION peft;\n");
ok($node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE query LIKE 'DROP EXTENSION peft%'"),
	'drop extension, wait => true: DROP EXTENSION waits for the caller');
my $step = su("SELECT step FROM peft.jobs WHERE adapter = 'drop_waits'");
ok($node->poll_query_until('postgres', "SELECT step > $step FROM peft.jobs WHERE adapter = 'drop_waits'"),
	'drop extension, wait => true: the job goes on training meanwhile');
$waiter->{stderr} = '';
$waiter->query('SELECT 1');
like($waiter->{stderr}, qr/ERROR:  40P01: deadlock detected: training job \d+ waits for a lock held by this transaction/,
	'drop extension, wait => true: once the job must save, the caller gets a deadlock error (40P01), no hang');
$waiter->quit;
$dropper->{stderr} = '';
$dropper->query('SELECT 1');
is($dropper->{stderr}, '', 'drop extension, wait => true: DROP EXTENSION then completes');
$dropper->quit;
is(su("SELECT count(*) FROM pg_namespace WHERE nspname = 'peft'"), '0', 'drop extension, wait => true: the extension is gone');
ok(no_workers_left(), 'drop extension, wait => true: the worker ends');
is(worker_end($pid, $log), 'exited with exit code 1', 'drop extension, wait => true: with an error, not a crash');
ok(!$node->log_contains(qr/terminated by signal|reinitializing/, $log), 'drop extension, wait => true: no crash restart');
su('CREATE EXTENSION peft; SELECT peft_register_model(\'tiny\', \'' . $tiny . '\')');

# ---- 5c. the caller itself holds a lock the worker needs ---------------------------
# wait => true in a transaction that altered the data: the worker cannot
# read it before the caller ends, which waits for the worker.  Detected the
# same way (it hung for good): 40P01, the job canceled, nothing saved.
$waiter = $node->background_psql('postgres', on_error_stop => 0);
$waiter->query_safe('\set VERBOSITY verbose');
$waiter->query_safe("SET statement_timeout = '60s'");
$waiter->query_safe('BEGIN');
$waiter->query_safe('ALTER TABLE small ADD COLUMN note text');
$t0 = time;
$waiter->{stderr} = '';
$waiter->query(train_sql('self_locked', 'small', $QUICK, 1));
like($waiter->{stderr}, qr/ERROR:  40P01: deadlock detected/, 'own lock: the waiting call fails with 40P01 instead of hanging');
cmp_ok(time - $t0, '<', 30, 'own lock: within seconds');
$waiter->{stderr} = '';
$waiter->query_safe('ROLLBACK');
$waiter->quit;
ok($node->poll_query_until('postgres', "SELECT status = 'canceled' FROM peft.jobs WHERE adapter = 'self_locked'"),
	'own lock: the job ends canceled');
is(su("SELECT count(*) FROM peft.adapters WHERE name = 'self_locked'"), '0', 'own lock: no adapter row');

# peft_wait too: a job queued behind another reads the table this
# transaction altered once the first job is canceled.
my $blocker = su(train_sql('blocker', 'reviews', $LONG, 0));
ok(wait_running($blocker), 'own lock, peft_wait: a long job holds the slot');
$job = su(train_sql('waited_on', 'small', $QUICK, 0));
$waiter = $node->background_psql('postgres', on_error_stop => 0);
$waiter->query_safe('\set VERBOSITY verbose');
$waiter->query_safe("SET statement_timeout = '60s'");
$waiter->query_safe('BEGIN');
$waiter->query_safe('ALTER TABLE small ADD COLUMN note text');
$waiter->query_until(qr/waiting/, "\\echo waiting\nSELECT status FROM peft_wait($job);\n");
su("SELECT peft_cancel($blocker)");
$waiter->{stderr} = '';
$waiter->query('ROLLBACK');
like($waiter->{stderr}, qr/ERROR:  40P01: deadlock detected: training job $job waits/,
	'own lock, peft_wait: fails with 40P01 instead of hanging');
$waiter->quit;
ok($node->poll_query_until('postgres', "SELECT status = 'succeeded' FROM peft.jobs WHERE id = $job"),
	'own lock, peft_wait: once the transaction ends, the job (not its waiter\'s to cancel) succeeds');

# ---- 5d. DROP and CREATE EXTENSION in one transaction while a job trains --------
# The new catalog numbers jobs from 1 again.  The old worker must not write
# into the new job that gets its id (it did: progress, then its own adapter
# under that job, then marked it succeeded); it stops at its next report.
su('CREATE DATABASE recreate');
su(setup_sql(), 'recreate');
my $old = su(train_sql('old', 'reviews', $MEDIUM, 0), 'recreate');
ok(wait_running($old, 'recreate'), 'recreate: old job training');
$pid = su("SELECT worker_pid FROM peft.jobs WHERE id = $old", 'recreate');
$log = log_position();
su("BEGIN; DROP EXTENSION peft; CREATE EXTENSION peft; SELECT peft_register_model('tiny', '$tiny'); COMMIT;", 'recreate');
my $new = su(train_sql('fresh', 'small', $QUICK, 0), 'recreate');
is($new, $old, "recreate: the new job got the old job's id ($new)");
ok($node->poll_query_until('recreate', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"),
	'recreate: the old worker stops');
ok($node->log_contains(qr/the row of training job $old is gone/, $log), 'recreate: it says why in the log');
ok($node->poll_query_until('recreate', "SELECT status = 'succeeded' FROM peft.jobs WHERE id = $new"),
	'recreate: the new job succeeds');
is(su("SELECT string_agg(name || ':' || version || ':' || job, ',') FROM peft.adapters", 'recreate'),
	"fresh:1:$new", 'recreate: the new catalog holds only the new adapter (nothing of the old job)');
is(su("SELECT (metrics->>'train_rows')::int + (metrics->>'valid_rows')::int FROM peft.jobs WHERE id = $new", 'recreate'),
	'600', 'recreate: the new job row describes the new job');

# ---- 6. three wait => true calls for one name, training at the same time ---------
# 002_jobs.pl runs two with peft.max_jobs = 1, one after the other; here
# peft.max_jobs = 3, so they train together and save within moments.
su("LOAD 'peft'; ALTER SYSTEM SET peft.max_jobs = 3");
$node->reload;
ok($node->poll_query_until('postgres', "SELECT peft_version() IS NOT NULL AND current_setting('peft.max_jobs') = '3'"),
	'same name: peft.max_jobs = 3');
my @sessions = map { $node->background_psql('postgres', on_error_stop => 0) } 1 .. 3;
$_->query_until(qr/started/, "\\echo started\n" . train_sql('race', 'small', '{"epochs": 8, "batch_size": 8}', 1) . ";\n")
  for @sessions;
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM peft.jobs WHERE adapter = 'race' AND status IN ('succeeded', 'failed', 'canceled')"),
	'same name: the three jobs end');
my @ids;
for my $s (@sessions)
{
	$s->{stderr} = '';
	my ($res) = $s->query('SELECT 1');
	push @ids, $1 if $res =~ /^(\d+)\n1$/;
	is($s->{stderr}, '', 'same name: a caller got no error');
	$s->quit;
}
is(scalar(@ids), 3, 'same name: each caller got its job id');
is(su("SELECT max(started_at) < min(finished_at) FROM peft.jobs WHERE adapter = 'race'"), 't',
	'same name: the three jobs trained at the same time');
is(su("SELECT string_agg(version::text, ',' ORDER BY version) FROM peft.adapters WHERE name = 'race'"),
	'1,2,3', 'same name: three distinct versions');
is(su("SELECT count(DISTINCT a.job) FROM peft.adapters a JOIN peft.jobs j ON j.id = a.job "
	  . "WHERE a.name = 'race' AND j.status = 'succeeded' AND length(a.weights) > 1000 "
	  . "AND a.job IN (" . join(',', @ids) . ")"),
	'3', 'same name: every version is whole and belongs to one of the callers\' jobs');
is(su("SELECT string_agg(version::text, ',') FROM peft.adapters WHERE name = 'race' AND active"),
	'3', 'same name: exactly one version is active, the last saved');

# ---- 7. corrupted adapter rows written by the owner --------------------------------
# peft_predict and peft_embed read the row again when it changes: a broken
# row is an ERROR with SQLSTATE XX001 (data_corrupted), the connection goes
# on, and the server does not restart.
su(train_sql('victim', 'small', '{"epochs": 2, "batch_size": 8}', 1));
su("CREATE TABLE saved AS SELECT weights, config, labels, task FROM peft.adapters WHERE name = 'victim'");
my $start = su('SELECT pg_postmaster_start_time()');
$log = log_position();
my $user = $node->background_psql('postgres', on_error_stop => 0);
$user->query_safe('\set VERBOSITY verbose');
my $user_pid = $user->query_safe('SELECT pg_backend_pid()');
like($user->query_safe("SELECT label FROM peft_predict('victim', 'movie good today')"),
	qr/^(positive|negative|neutral)$/, 'corrupt: the intact adapter predicts');

my $hex = su("SELECT encode(weights, 'hex') FROM saved");
my $bytes = pack('H*', $hex);
my $header_len = unpack('Q<', substr($bytes, 0, 8));
my $header = substr($bytes, 8, $header_len);
like($header, qr/"shape"\s*:\s*\[\s*\d/, 'corrupt: the weights are safetensors with shapes');

sub bytea_literal
{
	return "'\\x" . unpack('H*', $_[0]) . "'::bytea";
}

# Flip bits: $xor at offset.
sub flipped
{
	my ($offset, $xor) = @_;
	my $b = $bytes;
	substr($b, $offset, 1) = chr(ord(substr($b, $offset, 1)) ^ $xor);
	return $b;
}

# Run SQL in the user's session: it must fail with $state and $message, and
# the same backend must answer the next query.
sub expect_error
{
	my ($sql, $state, $message, $name) = @_;
	$user->{stderr} = '';
	$user->query($sql);
	like($user->{stderr}, qr/ERROR:  $state: .*$message/, "$name: ERROR with SQLSTATE $state");
	$user->{stderr} = '';
	is($user->query('SELECT pg_backend_pid()'), $user_pid, "$name: the same backend answers the next query");
}

$header =~ /"shape"\s*:\s*\[\s*\d/;
my $shape_digit = $+[0] - 1;	# offset of the first digit of a shape in the header
my $data_start = 8 + $header_len;
my %weights = (
	'garbage bytes' => "'\\xdeadbeef'::bytea",
	'empty bytes' => "''::bytea",
	'truncated to half' => bytea_literal(substr($bytes, 0, length($bytes) / 2)),
	'last byte cut' => bytea_literal(substr($bytes, 0, length($bytes) - 1)),
	'header length bit flipped' => bytea_literal(flipped(7, 0x80)),
	'header length off by one' => bytea_literal(flipped(0, 0x01)),
	'shape bit flipped' => bytea_literal(flipped(8 + $shape_digit, 0x01)),
	'NaN written into a tensor' => do {
		my $b = $bytes;
		substr($b, $data_start, 4) = pack('V', 0x7fc00000);
		bytea_literal($b);
	},
);
for my $case (sort keys %weights)
{
	su("UPDATE peft.adapters SET weights = $weights{$case} WHERE name = 'victim'");
	expect_error("SELECT * FROM peft_predict('victim', 'movie good today')",
		'XX001', 'adapter "victim" version 1 cannot be loaded', "corrupt weights ($case): peft_predict");
	expect_error("SELECT peft_embed('tiny', 'movie good today', 'victim')",
		'XX001', 'adapter "victim" version 1 cannot be loaded', "corrupt weights ($case): peft_embed");
}
expect_error("SELECT * FROM peft_predict('victim', ARRAY['movie good today', 'bad food'])",
	'XX001', 'cannot be loaded', 'corrupt weights: peft_predict on an array');
# A flip that leaves every value finite cannot be told from a real adapter
# (the bytes carry no checksum): it loads and predicts.
su("UPDATE peft.adapters SET weights = " . bytea_literal(flipped($data_start, 0x01)) . " WHERE name = 'victim'");
$user->{stderr} = '';
like($user->query("SELECT count(*) FROM peft_predict('victim', 'movie good today')"), qr/^1$/,
	'corrupt weights (a mantissa bit flipped): loads and predicts, no crash');
su("UPDATE peft.adapters SET weights = s.weights FROM saved s WHERE name = 'victim'");

my %configs = (
	'JSON null' => q{'null'::jsonb},
	'an array' => q{'[]'::jsonb},
	'an empty object' => q{'{}'::jsonb},
	'another peft_type' => q{jsonb_set(s.config, '{peft_type}', '"IA3"')},
	'r as a string' => q{jsonb_set(s.config, '{r}', '"8"')},
	'r of 0' => q{jsonb_set(s.config, '{r}', '0')},
	'r not matching the weights' => q{jsonb_set(s.config, '{r}', to_jsonb((s.config->>'r')::int * 2))},
	'r beyond the limit' => q{jsonb_set(s.config, '{r}', '1e9')},
	'other target_modules' => q{jsonb_set(s.config, '{target_modules}', '["key", "intermediate.dense"]')},
	'target_modules unknown' => q{jsonb_set(s.config, '{target_modules}', '["nonsense"]')},
	'lora_alpha missing' => q{s.config - 'lora_alpha'},
);
for my $case (sort keys %configs)
{
	su("UPDATE peft.adapters a SET config = $configs{$case} FROM saved s WHERE a.name = 'victim'");
	expect_error("SELECT * FROM peft_predict('victim', 'movie good today')",
		'XX001', 'adapter "victim" version 1 cannot be loaded', "corrupt config ($case): peft_predict");
	expect_error("SELECT peft_embed('tiny', 'movie good today', 'victim')",
		'XX001', 'adapter "victim" version 1 cannot be loaded', "corrupt config ($case): peft_embed");
}
su("UPDATE peft.adapters a SET config = s.config FROM saved s WHERE a.name = 'victim'");

my %rows = (
	'no labels' => q{labels = NULL},
	'one label' => q{labels = '{positive}'},
	'more labels than the head has' => q{labels = s.labels || '{extra,more}'::text[]},
	'task says regression' => q{task = 'regression', labels = NULL},
);
for my $case (sort keys %rows)
{
	su("UPDATE peft.adapters a SET $rows{$case} FROM saved s WHERE a.name = 'victim'");
	expect_error("SELECT * FROM peft_predict('victim', 'movie good today')",
		'XX001', 'adapter "victim" version 1', "corrupt row ($case): peft_predict");
	su("UPDATE peft.adapters a SET labels = s.labels, task = s.task FROM saved s WHERE a.name = 'victim'");
}

like($user->query_safe("SELECT label FROM peft_predict('victim', 'movie good today')"),
	qr/^(positive|negative|neutral)$/, 'corrupt: restored, the same connection predicts again');
is($user->query_safe('SELECT pg_backend_pid()'), $user_pid, 'corrupt: it is still the same backend');
is(su('SELECT pg_postmaster_start_time()'), $start, 'corrupt: pg_postmaster_start_time() unchanged');
ok(!$node->log_contains(qr/terminated by signal|reinitializing|PANIC/, $log),
	'corrupt: no process crashed and the server did not restart (the log says so)');
$user->quit;

$node->stop;
done_testing();
