# A model's weights live in a folder on the server, not in the database:
# a model.safetensors changed after registration is refused on the next load
# (its size and modification time are checked every time, in every session),
# peft_verify_model recomputes its SHA-256 and, when only the time changed,
# records the new time; a missing folder's ERROR names the model and says
# that every server that predicts needs it.
use strict;
use warnings;
use File::Copy qw(copy);
use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;

my $tiny = tiny_model_dir();
my $node = peft_node('files');
# A private copy of the tiny model, which this test changes.
my $dir = $node->basedir . '/model';
mkdir $dir or die "mkdir $dir: $!";
opendir(my $dh, $tiny) or die "opendir $tiny: $!";
for my $f (grep { -f "$tiny/$_" } readdir $dh)
{
	copy("$tiny/$f", "$dir/$f") or die "copy $f: $!";
}
closedir $dh;
my $weights = "$dir/model.safetensors";

$node->safe_psql('postgres', reviews_sql('small', 120) . qq{
	SELECT peft_register_model('mine', '$dir');
	SELECT peft_train('a', 'mine', 'small', 'body', 'sentiment',
	                  options => '{"epochs": 1, "batch_size": 8}', wait => true);
});
my $PREDICT = q{SELECT label || ' ' || score FROM peft_predict('a', 'the movie was great today')};
my $good = $node->safe_psql('postgres', $PREDICT);
ok($good ne '', 'the adapter predicts');
my $session = $node->background_psql('postgres', on_error_stop => 0);
is($session->query_safe($PREDICT), $good, 'a session maps the model');

# Overwrite 1,000 bytes in the middle of the weights, keeping the size.
sub patch_weights
{
	my ($bytes) = @_;
	open(my $fh, '+<:raw', $weights) or die "open $weights: $!";
	my $size = -s $fh;
	seek($fh, int($size / 2), 0);
	my $old;
	read($fh, $old, length $bytes);
	seek($fh, int($size / 2), 0);
	print $fh $bytes;
	close $fh;
	return $old;
}
my @stat = stat($weights);
my $original = patch_weights("\x3f" x 1000);
utime($stat[8], $stat[9] + 5, $weights);    # a different modification time, as any write gives
my ($rc, $out, $err) = $node->psql('postgres', $PREDICT);
like($err, qr/ERROR:  model "mine": "\Q$weights\E" changed after it was registered/,
	'a new session refuses the changed weights');
like($err, qr/DETAIL:  Its modification time is/, '... saying what changed');
$session->query($PREDICT);
like($session->{stderr}, qr/changed after it was registered/,
	'the session that had mapped the model refuses it too');
is($node->safe_psql('postgres', q{SELECT peft_verify_model('mine')}), 'f',
	'peft_verify_model: the SHA-256 differs');
($rc, $out, $err) = $node->psql('postgres', q{SELECT peft_train('b', 'mine', 'small', 'body', 'sentiment')});
like($err, qr/changed after it was registered/, 'peft_train refuses it at call time');

# The same bytes back, with another time (as a copy that did not keep times).
patch_weights($original);
utime($stat[8], $stat[9] + 10, $weights);
($rc, $out, $err) = $node->psql('postgres', $PREDICT);
like($err, qr/changed after it was registered/, 'the original bytes with a new time are refused');
is($node->safe_psql('postgres', q{SELECT peft_verify_model('mine')}), 't',
	'peft_verify_model: the SHA-256 matches');
is($node->safe_psql('postgres', $PREDICT), $good, '... and records the new time: predictions work again');

# A file of another size.
open(my $fh, '>>:raw', $weights) or die;
print $fh "\0";
close $fh;
($rc, $out, $err) = $node->psql('postgres', $PREDICT);
like($err, qr/DETAIL:  It has \d+ bytes; \d+ were registered/, 'a file of another size is refused');
truncate($weights, (stat $weights)[7] - 1) or die;

# A missing folder.
rename($dir, "$dir.moved") or die;
($rc, $out, $err) = $node->psql('postgres', $PREDICT);
like($err, qr/ERROR:  model "mine" is registered at "\Q$dir\E", which is missing on this server/,
	'a missing folder: the ERROR names the model and the path');
like($err, qr/every server that trains or\s+predicts with a model/, '... and says every server needs it');
($rc, $out, $err) = $node->psql('postgres', q{SELECT peft_verify_model('mine')});
like($err, qr/which is missing on this server/, 'peft_verify_model of a missing folder: the same ERROR');
rename("$dir.moved", $dir) or die;
utime($stat[8], $stat[9] + 20, $weights);
is($node->safe_psql('postgres', q{SELECT peft_verify_model('mine')}), 't', 'moved back and verified');
is($node->safe_psql('postgres', $PREDICT), $good, 'predictions work again');
$session->quit;

$node->stop;
done_testing();
