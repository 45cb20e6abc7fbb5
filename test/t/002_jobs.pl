# Training jobs from start to end: progress seen from another session,
# cancel, termination of the worker, a server crash, the peft.max_jobs
# queue, the caller's transaction (commit, rollback, wait => true) and
# concurrent versions of one adapter.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;
use Time::HiRes qw(time usleep);

my $tiny = $ENV{PEFT_TINY_MODEL_DIR};
plan skip_all => 'PEFT_TINY_MODEL_DIR is not set' unless $tiny && -d $tiny;

my $node = PostgreSQL::Test::Cluster->new('jobs');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 16");
$node->start;

# The tiny model and 20,000 learnable rows: with batch_size 8 one epoch is
# 2,250 steps, so LONG runs for minutes (every job using it is stopped by
# the test) and SHORT for a few seconds.
$node->safe_psql('postgres', qq{
	CREATE EXTENSION peft;
	SELECT peft_register_model('tiny', '$tiny');
	@{[ reviews_sql('reviews', 20000) ]}
});
my $LONG = '{"epochs": 500, "batch_size": 8}';
my $SHORT = '{"epochs": 2, "batch_size": 8}';

# SQL that starts a job on reviews and returns its id.
sub train_sql
{
	my ($adapter, $options, $wait) = @_;
	return "SELECT peft_train('$adapter', 'tiny', 'reviews', 'body', 'sentiment', "
	  . "options => '$options', wait => " . ($wait ? 'true' : 'false') . ")";
}

# Start a job with wait => false (safe_psql commits) and return its id.
sub start_job
{
	my ($adapter, $options) = @_;
	return $node->safe_psql('postgres', train_sql($adapter, $options, 0));
}

# Wait until a job is running and has committed at least one step.
sub wait_running
{
	my ($job) = @_;
	return $node->poll_query_until('postgres',
		"SELECT status = 'running' AND step > 0 FROM peft.jobs WHERE id = $job");
}

# Wait until no training worker is left.
sub wait_no_workers
{
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'peft training'");
}

sub adapters_of_job
{
	my ($job) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM peft.adapters WHERE job = $job");
}

# ---- 1. progress is visible from another session while the job runs ----------
my $job = start_job('progress', $LONG);
ok(wait_running($job), 'progress: job started with wait => false runs once its caller commits');
my ($step1, $loss_set, $hist1) = split /\|/, $node->safe_psql('postgres',
	"SELECT step, loss IS NOT NULL, cardinality(loss_history) FROM peft.jobs WHERE id = $job");
ok($node->poll_query_until('postgres',
	"SELECT step > $step1 AND cardinality(loss_history) > $hist1 FROM peft.jobs WHERE id = $job"),
	'progress: step and loss_history grow between two reads from another session');
my ($status, $step2, $loss2) = split /\|/, $node->safe_psql('postgres',
	"SELECT status, step, loss IS NOT NULL FROM peft.jobs WHERE id = $job");
is($status, 'running', 'progress: status is running');
cmp_ok($step2, '>', $step1, 'progress: step increased');
ok($loss_set eq 't' && $loss2 eq 't', 'progress: loss is set');

# ---- 2. peft_cancel stops a running job within 2 seconds -------------------
my $t0 = time;
is($node->safe_psql('postgres', "SELECT peft_cancel($job)"), 't', 'cancel: peft_cancel of a running job returns true');
$node->poll_query_until('postgres', "SELECT status = 'canceled' FROM peft.jobs WHERE id = $job");
my $elapsed = time - $t0;
cmp_ok($elapsed, '<', 2.0, sprintf('cancel: status becomes canceled within 2 seconds (%.2f s)', $elapsed));
is(adapters_of_job($job), '0', 'cancel: no adapter row for a canceled job');
is($node->safe_psql('postgres', "SELECT peft_cancel($job)"), 'f', 'cancel: canceling a finished job returns false');

# ---- 3. pg_terminate_backend of the worker -----------------------------------
$job = start_job('terminated', $LONG);
ok(wait_running($job), 'terminate: job running');
my $pid = $node->safe_psql('postgres', "SELECT worker_pid FROM peft.jobs WHERE id = $job");
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't', 'terminate: worker signaled');
ok($node->poll_query_until('postgres',
	"SELECT status = 'failed' AND error <> '' FROM peft.jobs WHERE id = $job"),
	'terminate: job ends failed with an error message');
like($node->safe_psql('postgres', "SELECT error FROM peft.jobs WHERE id = $job"),
	qr/terminated/, 'terminate: the error says the worker was terminated');
is(adapters_of_job($job), '0', 'terminate: no adapter row');

# ---- 4. immediate shutdown mid-training ------------------------------------
$job = start_job('crashed', $LONG);
ok(wait_running($job), 'crash: job running');
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.jobs WHERE status IN ('queued', 'running')"),
	'0', 'crash: after restart no job is left queued or running');
is($node->safe_psql('postgres', "SELECT status, error IS NOT NULL FROM peft.jobs WHERE id = $job"),
	'failed|t', 'crash: the interrupted job shows failed with an error');
is(adapters_of_job($job), '0', 'crash: no adapter row');
my ($stdout, $stderr);
$node->psql('postgres', "SELECT status FROM peft_wait($job)", stdout => \$stdout, stderr => \$stderr);
like($stderr, qr/training job $job failed: the training worker ended without finishing/,
	'crash: peft_wait on the interrupted job returns at once with its error');

# ---- 5. peft.max_jobs = 1: a second job queues, then both succeed ------------
# (ALTER SYSTEM knows peft's settings once this backend has loaded peft.so.)
$node->safe_psql('postgres', "LOAD 'peft'; ALTER SYSTEM SET peft.max_jobs = 1");
$node->reload;
# poll_query_until also wants an empty stderr: loading peft.so must not warn
# that it discarded the setting (it did while the prefix was reserved early).
ok($node->poll_query_until('postgres', "SELECT peft_version() IS NOT NULL AND current_setting('peft.max_jobs') = '1'"),
	'max_jobs: peft.max_jobs = 1 after reload');
my $first = start_job('queue', '{"epochs": 6, "batch_size": 8}');
ok(wait_running($first), 'max_jobs: first job running');
my $second = start_job('queue', $SHORT);
# The second job's worker has started (it set worker_pid) and waits for the slot.
ok($node->poll_query_until('postgres',
	"SELECT worker_pid IS NOT NULL FROM peft.jobs WHERE id = $second"),
	'max_jobs: second job has its worker');
is($node->safe_psql('postgres',
	"SELECT string_agg(status, ',' ORDER BY id) FROM peft.jobs WHERE id IN ($first, $second)"),
	'running,queued', 'max_jobs: second job is queued while the first runs');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 2 FROM peft.jobs WHERE id IN ($first, $second) AND status = 'succeeded'"),
	'max_jobs: both jobs succeed');
is($node->safe_psql('postgres',
	"SELECT string_agg(version::text, ',' ORDER BY job) FROM peft.adapters WHERE name = 'queue'"),
	'1,2', 'max_jobs: the two jobs made versions 1 and 2');
ok($node->safe_psql('postgres',
	"SELECT (SELECT started_at FROM peft.jobs WHERE id = $second) >= (SELECT finished_at FROM peft.jobs WHERE id = $first)")
	eq 't', 'max_jobs: the second job started after the first finished');

# ---- 6. the caller rolls back a wait => false call -----------------------------
$node->safe_psql('postgres', "BEGIN; " . train_sql('rolledback', $SHORT, 0) . "; ROLLBACK;");
sleep 3;
ok(wait_no_workers(), 'rollback: the worker exits');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.jobs WHERE adapter = 'rolledback'"),
	'0', 'rollback: no job row remains');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.adapters WHERE name = 'rolledback'"),
	'0', 'rollback: no adapter appears');

# ---- 7. wait => true commits on its own, whatever the caller does --------------
$node->psql('postgres', "BEGIN; " . train_sql('waited', '{"epochs": 1, "batch_size": 8}', 1) . "; ROLLBACK;",
	stdout => \$stdout, stderr => \$stderr);
like($stdout, qr/^\d+$/, 'wait in a transaction: peft_train returned a job id');
is($node->safe_psql('postgres', "SELECT status FROM peft.jobs WHERE adapter = 'waited'"),
	'succeeded', 'wait in a rolled-back transaction: the job row stays, succeeded');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.adapters WHERE name = 'waited'"),
	'1', 'wait in a rolled-back transaction: the adapter row stays');

# ---- 8. canceling the waiting statement cancels the job ------------------------
$t0 = time;
$node->psql('postgres', "SET statement_timeout = '3s'; " . train_sql('timedout', $LONG, 1),
	stdout => \$stdout, stderr => \$stderr);
like($stderr, qr/canceling statement due to statement timeout/, 'statement timeout: the waiting call is canceled');
ok($node->poll_query_until('postgres',
	"SELECT status = 'canceled' FROM peft.jobs WHERE adapter = 'timedout'"),
	'statement timeout: the job ends canceled');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.adapters WHERE name = 'timedout'"),
	'0', 'statement timeout: no adapter row');

# ---- 9. two sessions train the same adapter name at once ----------------------
my @sessions = map { $node->background_psql('postgres', on_error_stop => 0) } 1 .. 2;
$_->query_until(qr/started/, "\\echo started\n" . train_sql('twin', $SHORT, 1) . ";\n") for @sessions;
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 2 FROM peft.jobs WHERE adapter = 'twin' AND status = 'succeeded'"),
	'same name: both jobs succeed');
for my $s (@sessions)
{
	like($s->query('SELECT 1'), qr/^\d+\n1$/, 'same name: the session got its job id');
	is($s->{stderr}, '', 'same name: the session got no error');
	$s->quit;
}
is($node->safe_psql('postgres',
	"SELECT string_agg(version::text, ',' ORDER BY version) FROM peft.adapters WHERE name = 'twin'"),
	'1,2', 'same name: two distinct versions');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM peft.adapters a JOIN peft.jobs j ON j.id = a.job "
	. "WHERE a.name = 'twin' AND length(a.weights) > 1000 AND j.status = 'succeeded'"),
	'2', 'same name: both adapter rows intact, each linked to its succeeded job');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.adapters WHERE name = 'twin' AND active"),
	'1', 'same name: exactly one version is active');

$node->stop;
done_testing();
