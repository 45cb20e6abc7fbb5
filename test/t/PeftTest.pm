# PeftTest - helpers shared by peft's TAP tests: a started node with the
# extension and the tiny model, learnable review tables, training calls.
package PeftTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(tiny_model_dir reviews_sql peft_node train_and_wait version_predictions serving_pids maps_sql);

# The tiny model's folder; the whole test is skipped without it (./test/run
# always generates it, so a skip there is a bug of the runner, not a pass).
sub tiny_model_dir
{
	my $tiny = $ENV{PEFT_TINY_MODEL_DIR};
	plan skip_all => 'PEFT_TINY_MODEL_DIR is not set' unless $tiny && -d $tiny;
	return $tiny;
}

# SQL creating a learnable table of $n three-class reviews: id, $body (text,
# default body) and $label (the sentiment, default sentiment).
sub reviews_sql
{
	my ($table, $n, $body, $label) = @_;
	$body //= 'body';
	$label //= 'sentiment';
	return qq{
	CREATE TABLE $table (id int PRIMARY KEY, $body text, $label text);
	INSERT INTO $table
	SELECT i,
	       (ARRAY['the','movie','was','and','it','service','food','place','we','went'])[1 + (i * 7) % 10] || ' ' ||
	       (ARRAY['good','great','excellent','bad','terrible','awful','table','chair','city','river'])[1 + (i * 13) % 10] || ' ' ||
	       (ARRAY['today','with','our','team','very','really','hotel','room'])[1 + (i * 3) % 8],
	       CASE WHEN (i * 13) % 10 < 3 THEN 'positive' WHEN (i * 13) % 10 < 6 THEN 'negative' ELSE 'neutral' END
	FROM generate_series(1, $n) i;
	};
}

# A new node named $name with peft preloaded, started, the extension created
# in database postgres and the tiny model registered as 'tiny'.  %opts:
# conf => extra postgresql.conf lines, allows_streaming => 1 for a primary.
sub peft_node
{
	my ($name, %opts) = @_;
	my $tiny = tiny_model_dir();
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => $opts{allows_streaming} ? 1 : 0);
	$node->append_conf('postgresql.conf', "max_worker_processes = 16\n" . ($opts{conf} // ''));
	$node->start;
	$node->safe_psql('postgres', qq{
		CREATE EXTENSION peft;
		SELECT peft_register_model('tiny', '$tiny');
	});
	return $node;
}

# Train adapter $adapter on $table (body -> sentiment) and wait for it; returns the job id.
sub train_and_wait
{
	my ($node, $adapter, $table, %opts) = @_;
	my $method = $opts{method} // 'lora';
	my $options = $opts{options} // '{"epochs": 2, "batch_size": 8, "learning_rate": 0.01}';
	my $db = $opts{db} // 'postgres';
	return $node->safe_psql($db, qq{
		SELECT peft_train('$adapter', 'tiny', '$table', 'body', 'sentiment',
		                  method => '$method', options => '$options', wait => true)});
}

# Every version of every adapter in $db, each made active in turn (in a
# transaction rolled back), scored on the texts of the SQL array $texts: one
# line per text, "name vN ord label score" (float8 text is exact).
sub version_predictions
{
	my ($node, $db, $texts) = @_;
	my @rows = split /\n/, $node->safe_psql($db, 'SELECT name, version FROM peft.adapters ORDER BY 1, 2');
	my $out = '';
	for my $row (@rows)
	{
		my ($name, $version) = split /\|/, $row;
		$out .= $node->safe_psql($db, qq{
			BEGIN;
			SELECT peft_activate('$name', $version);
			SELECT '$name v$version ' || ord || ' ' || label || ' ' || score FROM peft_predict('$name', $texts);
			ROLLBACK;
		}) . "\n";
	}
	return $out;
}

# The pids of $node's serving workers, comma-separated in order ('' for none).
sub serving_pids
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'peft serving'");
}

# SQL counting the lines of the backend's /proc maps that name the engine,
# BLAS or model weights (safetensors or GGUF): 0 in a connection that only
# hands its calls to a serving worker.
sub maps_sql
{
	return "SELECT count(*) FROM regexp_split_to_table(pg_read_file('/proc/' || pg_backend_pid() || '/maps'), E'\\n') l "
	  . "WHERE l ~ '(peft_engine|openblas|model\\.safetensors|\\.gguf)'";
}

1;
